"""Managed API keys: made, used, listed and revoked; stored only as digests.

The store and the HTTP checks run on fakeredis and on a real redis-server (the ``client``
fixture); the ``tevo-hold keys`` commands on the real one. Revocation seen by every gunicorn
worker at once is in test_operations.py.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Iterator

import fakeredis
import pytest
import redis
from click.testing import CliRunner, Result
from flask.testing import FlaskClient

from tevo_hold import HoldService, Settings, build_service, create_app, errors
from tevo_hold.auth import Authenticator, KeyStore
from tevo_hold.cli import main

from .conftest import API_KEY
from .redis_dump import everything_in

HOLD = {"remote_id": "L1", "quantity": 1, "global_id": "g1"}


@pytest.fixture
def store(client: redis.Redis) -> KeyStore:
    return KeyStore(client)


def api(service: HoldService) -> FlaskClient:
    """A test client of an app on ``service``: one more "process" on the same Redis."""
    app = create_app({"TEVO_HOLD_API_KEYS": API_KEY, "TESTING": True}, service=service)
    return app.test_client()


def get_hold(http: FlaskClient, key: str) -> int:
    """The status of GET /v1/holds/nope with ``key`` (404 when the key is accepted)."""
    return http.get("/v1/holds/nope", headers={"X-API-Key": key}).status_code


# -- the store -------------------------------------------------------------------------------


def test_create_returns_a_random_th_key_once_with_its_record(store: KeyStore) -> None:
    key, plaintext = store.create("tevo-prod")
    _, other = store.create("tevo-staging")
    assert plaintext.startswith("th_") and len(plaintext) == 3 + 43
    assert plaintext != other
    assert key.name == "tevo-prod"
    assert key.prefix == plaintext[:11] and plaintext.startswith(key.prefix)
    assert key.last_used_at is None and not key.revoked
    assert [k.name for k in store.list()] == ["tevo-prod", "tevo-staging"]
    assert store.get("tevo-prod") == key


def test_the_plaintext_is_stored_nowhere_only_its_digest(
    store: KeyStore, client: redis.Redis, service: HoldService
) -> None:
    _, plaintext = store.create("tevo")
    assert get_hold(api(service), plaintext) == 404  # used once, so last-used is written too
    dump = everything_in(client)
    assert plaintext.encode() not in dump
    assert plaintext[3:].encode() not in dump  # nor the random part alone
    assert hashlib.sha256(plaintext.encode()).hexdigest().encode() in dump


def test_lookup_names_the_key_and_records_its_use_at_most_every_interval(
    client: redis.Redis,
) -> None:
    lazy = KeyStore(client, touch_interval=60)
    _, plaintext = lazy.create("tevo")
    assert lazy.lookup(plaintext) == ("tevo", False)
    first = lazy.get("tevo")
    assert first is not None and first.last_used_at is not None
    time.sleep(0.01)
    lazy.lookup(plaintext)
    assert lazy.get("tevo") == first  # within the interval: not written again

    eager = KeyStore(client, touch_interval=0.001)
    time.sleep(0.01)
    eager.lookup(plaintext)
    later = eager.get("tevo")
    assert later is not None and later.last_used_at is not None
    assert later.last_used_at > first.last_used_at


def test_a_create_sent_twice_makes_one_key_and_answers_it_both_times(
    store: KeyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """redis-py sends a call again when its reply was lost: the second run of the same create
    (the same new key's digest) answers the key made, not "name taken" for a name that then
    could never be used, its key never shown."""
    sent: list[list[object]] = []
    script = store._script

    def twice(keys: list[str], args: list[object]) -> object:
        sent.append(args)
        script(keys, args)  # the first run, whose reply is lost
        return script(keys, args)

    monkeypatch.setattr(store, "_script", twice)
    record, plaintext = store.create("alice")
    assert len(sent) == 1
    assert store.lookup(plaintext) == ("alice", False)
    got = store.get("alice")
    assert got is not None and (got.prefix, got.created_at) == (record.prefix, record.created_at)
    with pytest.raises(errors.InvalidRequest, match="exists already"):
        store.create("alice")  # another key under the name: still refused


@pytest.mark.parametrize("client", ["redis"], indirect=True)
def test_a_managed_key_works_while_redis_is_full(client: redis.Redis) -> None:
    """A full Redis (maxmemory, noeviction) refuses writes; recording a key's use is one. The
    key must still authenticate (reads are served), not be shut out for want of a timestamp."""
    store = KeyStore(client, touch_interval=0.001)
    _, plaintext = store.create("tevo")
    time.sleep(0.01)  # its use is due to be recorded
    client.config_set("maxmemory", 1)
    try:
        assert store.lookup(plaintext) == ("tevo", False)
    finally:
        client.config_set("maxmemory", 0)


def test_lookup_of_an_unknown_key_is_none(store: KeyStore) -> None:
    assert store.lookup("th_" + "x" * 43) is None


def test_revoke_marks_the_key_and_is_harmless_to_repeat(store: KeyStore) -> None:
    _, plaintext = store.create("tevo")
    revoked = store.revoke("tevo")
    assert revoked.revoked and revoked.revoked_at is not None
    assert store.lookup(plaintext) == ("tevo", True)
    assert store.revoke("tevo").revoked_at == revoked.revoked_at
    assert [k.revoked for k in store.list()] == [True]


def test_revoke_of_an_unknown_name_is_not_found(store: KeyStore) -> None:
    with pytest.raises(errors.NotFound, match="nope"):
        store.revoke("nope")


@pytest.mark.parametrize(
    "name", ["", "has space", "x" * 65, "-dash-first", "env-1", "a/b", "partner\n", "\nx"]
)
def test_malformed_or_reserved_names_are_refused(store: KeyStore, name: str) -> None:
    with pytest.raises(errors.InvalidRequest):
        store.create(name)
    assert store.list() == []


def test_a_name_with_a_newline_at_its_end_is_no_second_key_that_reads_as_the_first(
    store: KeyStore,
) -> None:
    """``$`` matches before a final newline: "partner\n" was made beside "partner", a second
    key that every list and log line shows as the first."""
    store.create("partner")
    with pytest.raises(errors.InvalidRequest, match="Key name"):
        store.create("partner\n")
    assert [k.name for k in store.list()] == ["partner"]


def test_a_name_is_used_once_even_after_revocation(store: KeyStore) -> None:
    store.create("tevo")
    with pytest.raises(errors.InvalidRequest, match="exists"):
        store.create("tevo")
    store.revoke("tevo")
    with pytest.raises(errors.InvalidRequest, match="exists"):
        store.create("tevo")


def test_authenticator_names_environment_keys_by_their_digest(store: KeyStore) -> None:
    auth = Authenticator(("first", "second"), store)
    assert auth.identify("first").name == "env-" + hashlib.sha256(b"first").hexdigest()[:8]
    assert auth.identify("second").name == "env-" + hashlib.sha256(b"second").hexdigest()[:8]
    assert not auth.identify("second").managed
    _, plaintext = store.create("tevo")
    identity = auth.identify(plaintext)
    assert (identity.name, identity.managed) == ("tevo", True)
    for wrong in ("third", "th_" + "y" * 43, plaintext + "x", plaintext[:-1]):
        with pytest.raises(errors.Unauthorized):
            auth.identify(wrong)


def test_only_a_key_of_a_managed_keys_exact_shape_is_looked_up_in_redis(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Any key starting with th_ was looked up (a script call on the shared Redis) before it
    was refused: anyone, keyless and unlimited, could make tevo-hold call Redis. Only th_ and
    43 URL-safe characters, the shape of every key made, is looked up now."""
    store = KeyStore(fakeredis.FakeRedis(server=fakeredis.FakeServer()))
    _, plaintext = store.create("tevo")
    assert re.fullmatch(r"th_[A-Za-z0-9_-]{43}", plaintext)
    looked_up: list[str] = []
    lookup = store.lookup
    monkeypatch.setattr(store, "lookup", lambda key: looked_up.append(key) or lookup(key))
    auth = Authenticator(("env-key",), store)
    for wrong in (
        "th_",
        "th_1",
        plaintext[:-1],
        plaintext + "x",
        plaintext[:-1] + "=",
        plaintext[:-1] + "\xe9",
        plaintext + "\n",
        "TH_" + plaintext[3:],
    ):
        with pytest.raises(errors.Unauthorized):
            auth.identify(wrong)
    assert looked_up == []
    assert auth.identify(plaintext).managed and looked_up == [plaintext]


def test_an_environment_key_keeps_its_name_whatever_keys_are_beside_it() -> None:
    """Named by position, the documented rotation (add the new key, then remove the old one)
    gave the new key the old one's name, and its rate-limit budget."""
    old, new = "old-key-for-tevo", "new-key-for-tevo"
    names = {
        keys: {key: Authenticator(keys, None).identify(key).name for key in keys}
        for keys in [(old,), (old, new), (new,), (new, old), ("other", new, old)]
    }
    assert {n[old] for n in names.values() if old in n} == {names[(old,)][old]}
    assert {n[new] for n in names.values() if new in n} == {names[(new,)][new]}
    assert names[(old,)][old] != names[(new,)][new]
    for name in (names[(old,)][old], names[(new,)][new]):
        assert name.startswith("env-") and old not in name and new not in name


# -- through the API -------------------------------------------------------------------------


def test_a_managed_key_works_beside_the_environment_keys(
    store: KeyStore, service: HoldService
) -> None:
    service.adapter.set_quantity("L1", 5)  # type: ignore[attr-defined]
    _, plaintext = store.create("tevo")
    http = api(service)
    made = http.post("/v1/holds", json=HOLD, headers={"X-API-Key": plaintext})
    assert made.status_code == 201, made.get_data(as_text=True)
    bearer = http.get("/v1/holds/g1", headers={"Authorization": f"Bearer {plaintext}"})
    assert bearer.status_code == 200
    assert get_hold(http, API_KEY) == 404  # the environment's key still works


def test_revocation_holds_at_once_for_every_app_on_the_redis(
    store: KeyStore, service: HoldService, client: redis.Redis
) -> None:
    _, plaintext = store.create("tevo")
    first, second = api(service), api(build_service(Settings(api_keys=("other",)), client=client))
    assert get_hold(first, plaintext) == 404
    assert get_hold(second, plaintext) == 404
    store.revoke("tevo")
    for http in (first, second):
        answer = http.get("/v1/holds/nope", headers={"X-API-Key": plaintext})
        assert answer.status_code == 401
        assert answer.json is not None and answer.json["code"] == "unauthorized"
        assert "revoked" in answer.json["detail"]


def test_a_redis_deployment_without_environment_keys_takes_managed_keys(
    store: KeyStore, client: redis.Redis
) -> None:
    service = build_service(Settings(redis_url="redis://unused"), client=client)
    config = {"TESTING": True, "TEVO_HOLD_REDIS_URL": "redis://unused"}
    http = create_app(config, service=service).test_client()
    assert get_hold(http, "anything") == 401
    _, plaintext = store.create("tevo")
    assert get_hold(http, plaintext) == 404


# -- tevo-hold keys ----------------------------------------------------------------------------


@pytest.fixture
def env(redis_url: str) -> Iterator[dict[str, str | None]]:
    """The command's environment: the test Redis (flushed first), no environment keys."""
    flusher = redis.Redis.from_url(redis_url)
    flusher.flushdb()
    yield {"TEVO_HOLD_REDIS_URL": redis_url, "TEVO_HOLD_API_KEYS": None}
    flusher.close()


def run(env: dict[str, str | None], *args: str) -> Result:
    return CliRunner(env=env).invoke(main, list(args))


def test_keys_create_prints_the_key_alone_and_stores_only_its_digest(
    env: dict[str, str | None], redis_url: str
) -> None:
    result = run(env, "keys", "create", "tevo-prod")
    assert result.exit_code == 0, result.output
    plaintext = result.stdout.strip()
    assert plaintext.startswith("th_") and "\n" not in plaintext
    assert "cannot be shown again" in result.stderr and plaintext not in result.stderr
    reader = redis.Redis.from_url(redis_url)
    try:
        assert plaintext.encode() not in everything_in(reader)
        assert KeyStore(reader).lookup(plaintext) == ("tevo-prod", False)
    finally:
        reader.close()


def test_keys_list_shows_names_prefixes_and_times_never_keys(env: dict[str, str | None]) -> None:
    plaintext = run(env, "keys", "create", "a").stdout.strip()
    run(env, "keys", "create", "b")
    run(env, "keys", "revoke", "b")
    listed = run(env, "keys", "list")
    assert listed.exit_code == 0, listed.output
    lines = listed.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["a", "b"]
    assert plaintext[:11] in lines[0] and plaintext not in listed.stdout
    assert "active" in lines[0] and "REVOKED" in lines[1]
    assert "2 keys" in listed.stderr

    as_json = [json.loads(line) for line in run(env, "keys", "list", "--json").stdout.splitlines()]
    assert [k["name"] for k in as_json] == ["a", "b"]
    assert set(as_json[0]) == {"name", "prefix", "created_at", "last_used_at", "revoked_at"}
    assert as_json[0]["revoked_at"] is None and as_json[1]["revoked_at"].endswith("Z")


def test_keys_revoke_refuses_the_key_from_then_on(env: dict[str, str | None], redis_url) -> None:
    plaintext = run(env, "keys", "create", "tevo").stdout.strip()
    result = run(env, "keys", "revoke", "tevo")
    assert result.exit_code == 0, result.output
    assert "revoked" in result.stdout and plaintext not in result.stdout
    reader = redis.Redis.from_url(redis_url)
    try:
        assert KeyStore(reader).lookup(plaintext) == ("tevo", True)
    finally:
        reader.close()


def test_keys_errors_exit_1_with_their_code(env: dict[str, str | None]) -> None:
    unknown = run(env, "keys", "revoke", "nope")
    assert unknown.exit_code == 1 and "not_found" in unknown.stderr
    run(env, "keys", "create", "tevo")
    taken = run(env, "keys", "create", "tevo")
    assert taken.exit_code == 1 and "invalid_request" in taken.stderr
    assert taken.stdout == ""
