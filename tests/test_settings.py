"""Settings: read once from TEVO_HOLD_* keys, with errors that name the key."""

from __future__ import annotations

import re

import pytest

from tevo_hold import Settings
from tevo_hold.connection import connect
from tevo_hold.errors import ConfigurationError
from tevo_hold.settings import DEMO_API_KEY, redact_url


def test_defaults_are_the_embedded_demo():
    s = Settings.from_env({})
    assert s.embedded and s.redis_url == "memory://"
    assert s.accepted_keys == (DEMO_API_KEY,)
    assert (s.hold_ttl, s.lease, s.max_body) == (900, 10, 65536)


def test_environment_values_are_parsed():
    s = Settings.from_env(
        {
            "TEVO_HOLD_REDIS_URL": "redis://h:1/2",
            "TEVO_HOLD_API_KEYS": " a, b ,,c ",
            "TEVO_HOLD_HOLD_TTL": "60",
            "TEVO_HOLD_REDIS_TIMEOUT": "0.25",
            "OTHER": "ignored",
        }
    )
    assert not s.embedded
    assert s.api_keys == ("a", "b", "c") and s.accepted_keys == ("a", "b", "c")
    assert (s.hold_ttl, s.redis_timeout) == (60.0, 0.25)


def test_typed_values_from_flask_config():
    s = Settings.from_mapping({"TEVO_HOLD_API_KEYS": ["k1", "k2"], "TEVO_HOLD_HOLD_TTL": 30})
    assert s.api_keys == ("k1", "k2") and s.hold_ttl == 30


def test_a_key_list_from_flask_config_is_read_as_the_variable_is():
    """Each key stripped and empty ones dropped, as from TEVO_HOLD_API_KEYS: ``[""]`` was the
    key "", which refused every call, and hid the start's warning that there is no key."""
    keys = Settings.from_mapping({"TEVO_HOLD_API_KEYS": [" k1 ", "", "  ", "k2"]}).api_keys
    assert keys == ("k1", "k2")
    assert Settings.from_mapping({"TEVO_HOLD_API_KEYS": ("",)}).api_keys == ()
    # an item is split at commas as the variable is: [os.environ["TEVO_HOLD_API_KEYS"]]
    # holding "k1,k2" mid-rotation was the one key "k1,k2", and TEvo's k1 and k2 both got 401
    rotation = Settings.from_mapping({"TEVO_HOLD_API_KEYS": ["k1, k2", "k3"]}).api_keys
    assert rotation == ("k1", "k2", "k3")


@pytest.mark.parametrize(
    ("item", "hint"),
    [(None, "an environment variable that is unset?"), (b"s3cret", ".decode()"), (7, "int")],
)
def test_a_key_list_item_that_is_no_str_is_refused_naming_the_mistake(item, hint):
    """Each item was str()-ed: ``[os.environ.get("UNSET")]`` accepted the key "None", and
    ``[b"s3cret"]`` the key "b's3cret'". Refused at start, no key shown."""
    with pytest.raises(ConfigurationError, match="TEVO_HOLD_API_KEYS") as caught:
        Settings.from_mapping({"TEVO_HOLD_API_KEYS": ["good-key", item]})
    message = str(caught.value)
    assert hint in message
    assert "s3cret" not in message and "good-key" not in message


@pytest.mark.parametrize(
    ("key", "value"),
    [("TEVO_HOLD_HOLD_TTL", "soon"), ("TEVO_HOLD_HOLD_TTL", "-5"), ("TEVO_HOLD_MAX_BODY", "0")],
)
def test_bad_values_name_their_key(key, value):
    with pytest.raises(ConfigurationError, match=key):
        Settings.from_env({key: value})


#: Every setting given in seconds.
DURATIONS = [
    "hold_ttl",
    "lease",
    "retention",
    "redis_timeout",
    "pos_timeout",
    "pos_budget",
    "retry_base",
    "retry_cap",
    "worker_interval",
]


@pytest.mark.parametrize("name", DURATIONS)
@pytest.mark.parametrize(
    "value", ["inf", "-inf", "nan", "Infinity", "1e308", "1e400", "3153600001", "0.0009", "0"]
)
def test_durations_must_be_finite_and_fit_a_redis_time_in_milliseconds(name, value):
    """TEVO_HOLD_HOLD_TTL=inf was taken, and every hold answered 500 (OverflowError);
    TEVO_HOLD_RETENTION=1e308 stopped the start with a raw OverflowError."""
    key = "TEVO_HOLD_" + name.upper()
    with pytest.raises(ConfigurationError, match=key) as caught:
        Settings.from_env({key: value})
    assert "seconds" in str(caught.value)
    with pytest.raises(ConfigurationError, match=key):  # typed, as in Flask config
        Settings.from_mapping({key: float(value)})


@pytest.mark.parametrize("name", DURATIONS)
def test_durations_from_a_millisecond_to_100_years_are_taken(name):
    key = "TEVO_HOLD_" + name.upper()
    for value in (0.001, 3153600000):
        settings = Settings.from_env({key: str(value)})
        assert getattr(settings, name) == value


@pytest.mark.parametrize("adapter", ["http", "tests.recording_pos:RecordingPos"])
def test_the_demo_key_is_the_reference_adapters_only(adapter):
    """TEVO_HOLD_REDIS_URL and TEVO_HOLD_API_KEYS unset (an environment file that failed to
    load) with TEVO_HOLD_ADAPTER naming a real POS: the public demo key was accepted, and its
    holds and invoices went to the POS. The demo key opens the embedded demo only."""
    env = {"TEVO_HOLD_ADAPTER": adapter, "TEVO_HOLD_POS_URL": "http://pos"}
    s = Settings.from_env(env)
    assert s.accepted_keys == ()
    assert s.embedded and not s.demo
    assert Settings.from_env({**env, "TEVO_HOLD_API_KEYS": "k"}).accepted_keys == ("k",)


def test_a_real_redis_without_api_keys_accepts_managed_keys_only():
    s = Settings.from_env({"TEVO_HOLD_REDIS_URL": "redis://localhost:6379/0"})
    assert s.api_keys == () and s.accepted_keys == ()


def test_signing_is_off_and_the_rate_limit_generous_by_default():
    s = Settings.from_env({})
    assert s.require_signature is False
    assert s.rate_limit == "600 per minute"


@pytest.mark.parametrize(
    ("raw", "expected"), [("1", True), ("true", True), ("On", True), ("0", False), ("no", False)]
)
def test_require_signature_parses_booleans(raw, expected):
    assert Settings.from_env({"TEVO_HOLD_REQUIRE_SIGNATURE": raw}).require_signature is expected


def test_rate_limit_takes_its_notation_or_off():
    limit = Settings.from_env({"TEVO_HOLD_RATE_LIMIT": "20/second; 1000 per hour"}).rate_limit
    assert limit == "20/second; 1000 per hour"
    assert Settings.from_env({"TEVO_HOLD_RATE_LIMIT": "off"}).rate_limit is None


def test_a_rate_limit_of_0_is_refused_rather_than_read_as_off():
    """ "0" turned the limit off, the most permissive reading of a value that reads as "no
    calls" too (and "0 per minute" is refused): it says to write off, or a limit."""
    with pytest.raises(ConfigurationError, match="TEVO_HOLD_RATE_LIMIT='0'") as caught:
        Settings.from_env({"TEVO_HOLD_RATE_LIMIT": "0"})
    assert "'off'" in str(caught.value)


@pytest.mark.parametrize(
    ("key", "value"),
    [("TEVO_HOLD_REQUIRE_SIGNATURE", "maybe"), ("TEVO_HOLD_RATE_LIMIT", "lots per minute")],
)
def test_bad_signing_and_limit_values_name_their_key(key, value):
    with pytest.raises(ConfigurationError, match=key):
        Settings.from_env({key: value})


def test_repr_shows_no_secret():
    s = Settings.from_env(
        {
            "TEVO_HOLD_REDIS_URL": "redis://:redis-password@h:1/0",
            "TEVO_HOLD_API_KEYS": "api-secret",
            "TEVO_HOLD_ADAPTER": "http",
            "TEVO_HOLD_POS_URL": "http://posuser:pos-password@pos.internal/tevo",
            "TEVO_HOLD_POS_API_KEY": "pos-secret",
        }
    )
    text = repr(s)
    assert "hold_ttl" in text and "pos_timeout" in text
    for secret in ("redis-password", "api-secret", "pos-password", "pos-secret"):
        assert secret not in text


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://u:pw@h:1/p?q=1", "http://u:***@h:1/p?q=1"),
        ("https://u:p@w@h/p", "https://u:***@h/p"),
        ("http://:pw@h", "http://:***@h"),
        ("redis://u:pw@h:6379/0", "redis://u:***@h:6379/0"),
        ("http://user@h/p", "http://user@h/p"),
        ("http://h/p@x", "http://h/p@x"),
        ("http://h:8080/tevo", "http://h:8080/tevo"),
        ("not a url", "not a url"),
    ],
)
def test_redact_url_hides_the_password_only(url, shown):
    assert redact_url(url) == shown


def test_unknown_url_scheme_is_named():
    with pytest.raises(ConfigurationError, match="TEVO_HOLD_REDIS_URL"):
        Settings.from_env({"TEVO_HOLD_REDIS_URL": "mysql://x", "TEVO_HOLD_API_KEYS": "k"})


@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("tcp://:s3cret@host:6379/0", "has the scheme 'tcp'"),
        ("tcp://user:s3cret@host:6379/0", "has the scheme 'tcp'"),
        ("http://s3cret@host:6379/0?password=s3cret", "has the scheme 'http'"),
        (":s3cret@host:6379", "is not a URL"),
        ("s3cret@host:6379", "is not a URL"),
        ("redis:/:s3cret@host:6379/0", "is not a URL"),
        (":s3cret@host://x", "is not a URL"),
    ],
)
def test_a_refused_redis_url_is_named_by_its_scheme_never_with_its_password(url, named):
    with pytest.raises(ConfigurationError, match="TEVO_HOLD_REDIS_URL") as caught:
        Settings.from_env({"TEVO_HOLD_REDIS_URL": url, "TEVO_HOLD_API_KEYS": "k"})
    message = str(caught.value)
    assert named in message and "redis://host:port/db" in message
    assert "s3cret" not in message


@pytest.mark.parametrize(
    "keys", [{"topsecret-key"}, frozenset({"topsecret-key"}), b"topsecret-key", 123456789]
)
def test_api_keys_of_a_wrong_type_are_named_by_their_type_never_shown(keys):
    """Flask config may hold typed values: a set of keys is the likely mistake, and the message
    says what to give instead, without the keys."""
    with pytest.raises(ConfigurationError, match="TEVO_HOLD_API_KEYS") as caught:
        Settings.from_mapping({"TEVO_HOLD_API_KEYS": keys})
    message = str(caught.value)
    assert f"given as {type(keys).__name__}" in message and "list of strings" in message
    assert "topsecret" not in message and "123456789" not in message


@pytest.mark.parametrize(
    "url", ["MEMORY://", "Memory://", "memory:///", "memory://localhost", "memory://:pw@x"]
)
def test_the_embedded_default_has_one_spelling(url):
    """Another spelling of memory:// once passed for a Redis URL, and failed later with
    redis-py's own ValueError: it is refused at start-up, saying the spelling, as the library
    refuses it when handed such settings directly."""
    with pytest.raises(ConfigurationError, match="spelled memory:// exactly") as caught:
        Settings.from_env({"TEVO_HOLD_REDIS_URL": url})
    assert "pw" not in str(caught.value)
    with pytest.raises(ConfigurationError, match="spelled memory:// exactly"):
        connect(Settings(redis_url=url))


def test_the_lease_must_outlast_a_pos_call():
    env = {"TEVO_HOLD_ADAPTER": "http", "TEVO_HOLD_POS_URL": "http://pos", "TEVO_HOLD_LEASE": "2"}
    with pytest.raises(ConfigurationError, match="TEVO_HOLD_LEASE"):
        Settings.from_env(env)
    assert Settings.from_env({**env, "TEVO_HOLD_POS_BUDGET": "1.5"}).lease == 2


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis://:s3cret@127.0.0.1:notaport/0", "its port must be a number from 1 to 65535"),
        ("redis://:s3cret@127.0.0.1:99999/0", "its port must be a number from 1 to 65535"),
        ("redis://:s3cret@127.0.0.1:0/0", "its port must be a number from 1 to 65535"),
        ("redis://user:s3/cret@127.0.0.1:6434/0", "must be percent-encoded"),
        ("redis://:s3cret@127.0.0.1:6434/notadb", "its path is not a database number"),
        ("redis://:s3cret@127.0.0.1:6434/0/1", "its path is not a database number"),
        ("redis://:s3cret@127.0.0.1:6434/-1", "its path is not a database number"),
        ("redis://:s3cret@h:6434/0?socket_timeout=abc", "socket_timeout must be a number"),
        ("redis://:s3cret@h:6434/0?socket_timeout=nan", "socket_timeout must be a number"),
        ("redis://:s3cret@h:6434/0?db=-1", "db must be a whole number, zero or more"),
        ("redis://:s3cret@h:6434/0?timeout=1", "did you mean socket_timeout?"),
        ("rediss://:s3cret@h:6434/0?ssl_ca_cert=/ca.pem", "did you mean ssl_ca_certs?"),
        ("redis://h:6434/0?s3cret=x", "none of the options redis-py takes"),
        ("unix:///run/redis.sock?db=two", "db must be a whole number"),
        ("redis+cluster://:s3cret@h1:99999", "not host:port, a port from 1 to 65535"),
        ("redis+cluster://u:s3/cret@h1:7000", "not host:port"),
        ("redis+cluster://:s3cret@h1:7000?db=2", "database 0 only"),
        ("redis+cluster://:s3cret@h1:7000?ssl_ca_cert=/ca.pem", "did you mean ssl_ca_certs?"),
        ("redis+sentinel://:s3/cret@h1:26379/m", "not host:port"),
        ("redis+sentinel://:s3cret@h1:26379/m/notadb", "db a number"),
        ("redis+sentinel://h1:26379/m?socket_timeout=-1", "socket_timeout must be a number"),
    ],
)
def test_a_mistyped_redis_url_is_refused_at_start_up_saying_what_is_wrong(url, says):
    """redis-py's ValueError (a port that is no number, a query value it cannot read) came at
    the first Redis call, as a traceback of every command and a 500 of every request; /notadb
    was read as database 0. The message names the part at fault, never the URL's password."""
    with pytest.raises(ConfigurationError, match="TEVO_HOLD_REDIS_URL") as caught:
        Settings.from_env({"TEVO_HOLD_REDIS_URL": url})
    message = str(caught.value)
    assert says in message
    assert "s3" not in message and "cret" not in message
    with pytest.raises(ConfigurationError, match=re.escape(says)):  # the library's way in too
        connect(Settings(redis_url=url))


@pytest.mark.parametrize(
    "url",
    [
        "redis://h",
        "redis://h:6379",
        "redis://h:6379/",
        "redis://:pw@h:6379/15/",
        "REDIS://h:6379/0",
        "redis://h:6379/0?socket_timeout=0.5&max_connections=50&client_name=tevo",
        "redis://h:6379?db=2",
        "rediss://h:6380/0?ssl_ca_certs=/ca.pem&ssl_cert_reqs=required&ssl_check_hostname=yes",
        "unix:///run/redis.sock?db=3",
        "redis+cluster://h1:7000?ssl_ca_certs=/ca.pem&db=0",
        "redis+sentinel://h1:26379/m/2?sentinel_password=s&socket_timeout=1",
    ],
)
def test_redis_urls_that_redis_py_reads_are_taken(url):
    settings = Settings.from_env({"TEVO_HOLD_REDIS_URL": url})
    connect(settings).close()  # nothing connects yet


@pytest.mark.parametrize(
    ("given", "meant"),
    [
        ("TEVO_HOLD_REDIS_ULR", "TEVO_HOLD_REDIS_URL"),
        ("TEVO_HOLD_API_KEY", "TEVO_HOLD_API_KEYS"),
        ("TEVO_HOLD_HOLDTTL", "TEVO_HOLD_HOLD_TTL"),
    ],
)
def test_a_misspelled_setting_names_the_one_it_resembles(given, meant):
    """A typo would otherwise leave the setting on its default without a word: for the Redis
    URL, the embedded in-process store, which no worker can reach."""
    with pytest.raises(
        ConfigurationError, match=f"{given} is not a tevo-hold setting: did you mean {meant}"
    ):
        Settings.from_mapping({given: "redis://127.0.0.1:6399/0"})


def test_other_variables_sharing_the_prefix_are_left_alone():
    settings = Settings.from_mapping(
        {
            "TEVO_HOLD_BIND": "0.0.0.0:80",
            "TEVO_HOLD_MODEL_EXAMPLES": "500",
            "TEVO_HOLD_THREADS": "4",
        }
    )
    assert settings.embedded


class _Adapter:
    """Stands for a vendor's adapter class: the setting refuses any class, PosAdapter or not."""


@pytest.mark.parametrize("given", ["class", "instance"])
def test_an_adapter_class_or_instance_instead_of_its_name_is_refused_naming_the_mistake(given):
    """app.config["TEVO_HOLD_ADAPTER"] = AcmePosAdapter (or an instance) was refused as 'No
    module named "<class 'tests"': the setting takes text, an instance goes in through a
    service."""
    value = _Adapter if given == "class" else _Adapter()
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_mapping({"TEVO_HOLD_ADAPTER": value})
    message = str(caught.value)
    assert "No module named" not in message and "TEVO_HOLD_ADAPTER" in message
    assert '"package.module:Class"' in message
    assert "TevoHold(app, service=HoldService(ledger, adapter, ...)" in message
    assert ('"tests.test_settings:_Adapter"' in message) == (given == "class")


def test_a_pos_ca_file_that_cannot_be_used_stops_the_start_naming_the_setting(tmp_path):
    """TEVO_HOLD_POS_CA_FILE is read when the adapter is made, so a path that is wrong, a
    directory or a file that holds no certificate stops the server, the worker and the command
    at start, rather than fail every call to the POS's https:// URL."""
    from tevo_hold import create_app

    config = {
        "TEVO_HOLD_ADAPTER": "http",
        "TEVO_HOLD_POS_URL": "https://127.0.0.1:9/api",
        "TEVO_HOLD_API_KEYS": "k" * 40,
    }
    assert Settings.from_env({**config, "TEVO_HOLD_POS_CA_FILE": "/x/ca.pem"}).pos_ca_file == (
        "/x/ca.pem"
    )
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("not a certificate\n")
    for path, says in [
        (tmp_path / "missing.pem", "cannot be read"),
        (tmp_path, "cannot be read"),
        (not_pem, "no PEM certificate"),
    ]:
        with pytest.raises(ConfigurationError, match="TEVO_HOLD_POS_CA_FILE") as caught:
            create_app({**config, "TEVO_HOLD_POS_CA_FILE": str(path)})
        assert says in str(caught.value)
