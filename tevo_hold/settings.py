"""Settings, read once from ``TEVO_HOLD_*`` keys (environment variables or Flask config)."""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigurationError

__all__ = [
    "DEMO_API_KEY",
    "EMBEDDED_URL",
    "PREFIX",
    "Settings",
    "embedded_url",
    "redact_url",
    "seconds",
    "url_scheme",
]

PREFIX = "TEVO_HOLD_"
#: The URL of the embedded default: state in this process's memory (fakeredis running our Lua).
EMBEDDED_URL = "memory://"
#: The schemes TEVO_HOLD_REDIS_URL may have (see tevo_hold.connection).
REDIS_SCHEMES = (
    "memory",
    "redis",
    "rediss",
    "unix",
    "redis+cluster",
    "rediss+cluster",
    "redis+sentinel",
)
#: The TEVO_HOLD_* variables that other parts read, not Settings: the server's config file
#: (server/gunicorn.conf.py) and ``tevo-hold check``.
OTHER_VARIABLES = frozenset(
    {
        "TEVO_HOLD_BIND",
        "TEVO_HOLD_THREADS",
        "TEVO_HOLD_REUSE_PORT",
        "TEVO_HOLD_GUNICORN_METRICS_DIR",
        "TEVO_HOLD_CHECK_API_KEY",
    }
)
#: The API key the embedded demo accepts (no Redis, no TEVO_HOLD_API_KEYS, the reference
#: adapter: see Settings.demo). Demo use only: it is public.
DEMO_API_KEY = "demo-key"


def redact_url(url: str) -> str:
    """``url`` with the password of its userinfo, if any, replaced by ``***`` (for logs).

    ``http://user:pw@host/path`` → ``http://user:***@host/path``; other URLs are unchanged.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    end = min((i for i in map(rest.find, "/?#") if i >= 0), default=len(rest))
    userinfo, at, hosts = rest[:end].rpartition("@")
    if not at or ":" not in userinfo:
        return url
    return f"{scheme}://{userinfo.partition(':')[0]}:***@{hosts}{rest[end:]}"


#: The longest duration a setting takes, in seconds: 100 years. Each becomes a Redis time in
#: milliseconds, added to the clock's by the Lua scripts, which write a time from 10^14 ms on
#: in exponent notation (1.0179601941847e+14), and Python cannot read that back: a hold TTL of
#: 3,000 years answered 500, inf every hold, and a retention of 1e308 stopped the start.
MAX_SECONDS = 100 * 365 * 24 * 3600
#: The shortest: a millisecond, Redis's unit (a shorter one is a TTL of 0, which Redis refuses).
MIN_SECONDS = 0.001


def seconds(raw: str | float, *, least: float = MIN_SECONDS) -> float:
    """A duration as every setting in seconds takes one: finite, from ``least`` (a
    millisecond; 0 where none means something) to MAX_SECONDS. Raises ValueError saying so.

    The command's options in seconds (``worker --lease``, ``backlog --max-age``...) are checked
    by it too."""
    value = float(raw)
    if not math.isfinite(value):
        raise ValueError("must be a finite number of seconds")
    if not least <= value <= MAX_SECONDS:
        lowest = f"{least:g} (a millisecond)" if least == MIN_SECONDS else f"{least:g}"
        raise ValueError(f"must be {lowest} to {MAX_SECONDS} (100 years) seconds")
    return value


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value <= 0:
        raise ValueError("must be positive")
    return value


def _non_negative_int(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise ValueError("must be zero or more")
    return value


def _keys(raw: str) -> tuple[str, ...]:
    return tuple(k.strip() for k in raw.split(",") if k.strip())


def _optional_str(raw: str) -> str | None:
    return raw or None


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE | _FALSE:
        return value in _TRUE
    raise ValueError("expected true or false (1/0, yes/no, on/off)")


def _rate_limit(raw: str) -> str | None:
    """Limits as :func:`tevo_hold.ratelimit.parse` reads them, checked now; ``off`` (or
    ``none``) for no limit. ``0`` is refused: it reads as "no calls" as well as "no limit"."""
    text = raw.strip()
    if text.lower() in ("off", "none"):
        return None
    if text == "0":
        raise ValueError("'0' is not a limit: write 'off' for no limit, or a limit")
    from .ratelimit import parse

    parse(text)
    return text


@dataclass(frozen=True, slots=True)
class Settings:
    """Every setting of tevo-hold. Build with :meth:`from_env` or :meth:`from_mapping`.

    Each field's metadata names its key (``TEVO_HOLD_`` + the upper-cased field name) and says
    what it means; the README's table of settings is this class.
    """

    # Secrets (and the URLs, which may carry a password: redis_url, pos_url) stay out of
    # repr(): no log shows them.
    redis_url: str = field(
        default=EMBEDDED_URL,
        repr=False,
        metadata={
            "help": "Redis URL (redis://, rediss://, unix://, redis+cluster://, "
            "rediss+cluster://, redis+sentinel://); unset: memory:// (embedded; that "
            "spelling only)"
        },
    )
    api_keys: tuple[str, ...] = field(
        default=(),
        repr=False,
        metadata={
            "help": "comma-separated API keys; any one is accepted (rotate keys freely), "
            "besides the managed keys of `tevo-hold keys`; each is named env- and the first 8 "
            "hex digits of its SHA-256 in logs, metrics and the rate limit"
        },
    )
    hold_ttl: float = field(default=900.0, metadata={"help": "seconds a hold lives"})
    lease: float = field(
        default=10.0,
        metadata={
            "help": "seconds a request owns its global_id before a retry may take over; also "
            "how long after a timed-out POS hold the worker releases it in the POS"
        },
    )
    retention: float = field(
        default=7 * 24 * 3600.0,
        metadata={"help": "seconds a finished hold is remembered (retries replay within it)"},
    )
    key_prefix: str = field(default="tevo_hold", metadata={"help": "prefix of every Redis key"})
    redis_timeout: float = field(
        default=0.25,
        metadata={
            "help": "seconds to connect to or wait on Redis, per attempt (two attempts per call; "
            "a request stops after its first failed call, so Redis down answers 503 in time)"
        },
    )
    max_body: int = field(default=65536, metadata={"help": "largest request body, in bytes"})
    inventory_file: str | None = field(
        default=None,
        metadata={
            "help": "embedded mode, reference adapter: JSON file of the listings the in-memory "
            'store starts with ({"listings": [{"remote_id", "quantity"}]}); unset: the '
            "demo listings demo-1 (10 tickets), demo-2 (4) and demo-sold-out (0)"
        },
    )
    adapter: str = field(
        default="reference",
        metadata={
            "help": "the POS adapter: reference (stock in Redis), http (a POS behind an HTTP "
            "API: see TEVO_HOLD_POS_*), or a class as package.module:Class"
        },
    )
    pos_url: str | None = field(
        default=None,
        repr=False,
        metadata={"help": "http adapter: the POS API's base URL (no query or fragment)"},
    )
    pos_api_key: str | None = field(
        default=None,
        repr=False,
        metadata={
            "help": "http adapter: the key sent to the POS (one a header cannot carry, a line "
            "break or a blank at either end, stops the start)"
        },
    )
    pos_auth_header: str = field(
        default="X-API-Key",
        metadata={"help": "http adapter: the header that carries the key (a header name)"},
    )
    pos_ca_file: str | None = field(
        default=None,
        metadata={
            "help": "http adapter: a PEM file of the CA certificates that sign the POS's "
            "certificate, trusted in place of requests' bundle (certifi); read at start-up"
        },
    )
    pos_hold_path: str = field(
        default="/holds",
        metadata={"help": "http adapter: hold path (starting with /, appended to the base URL)"},
    )
    pos_release_path: str = field(
        default="/releases",
        metadata={"help": "http adapter: release path (starting with /: see the hold path)"},
    )
    pos_invoice_path: str = field(
        default="/invoices",
        metadata={"help": "http adapter: invoice path (starting with /: see the hold path)"},
    )
    pos_timeout: float = field(
        default=2.0,
        metadata={
            "help": "http adapter: seconds per attempt, from connecting to the answer's last byte"
        },
    )
    pos_budget: float = field(
        default=3.0,
        metadata={"help": "http adapter: seconds for a whole POS call, retries included"},
    )
    pos_retries: int = field(
        default=2, metadata={"help": "http adapter: retries of a failed or timed-out call"}
    )
    retry_base: float = field(
        default=1.0, metadata={"help": "worker: first delay (s) before retrying a failed call"}
    )
    retry_cap: float = field(
        default=300.0, metadata={"help": "worker: longest delay (s) between retries"}
    )
    worker_interval: float = field(
        default=0.25, metadata={"help": "worker: seconds between polls when nothing is due"}
    )
    pos_health_path: str | None = field(
        default=None,
        metadata={
            "help": "http adapter: a path (starting with /) answering 2xx when the POS is up "
            "(for /readyz)"
        },
    )
    require_signature: bool = field(
        default=False,
        metadata={
            "help": "require X-Signature (HMAC-SHA256 of method, host, path and body under the "
            "API key) on every API request"
        },
    )
    rate_limit: str | None = field(
        default="600 per minute",
        metadata={
            "help": "requests per API key, shared by every process through Redis "
            "(e.g. '600 per minute', '20/second; 1000/hour'); off: no limit"
        },
    )
    proxy_hops: int = field(
        default=0,
        metadata={
            "help": "the bundled server (create_app): how many proxies in front of it append "
            "to X-Forwarded-For and set X-Forwarded-Proto, trusted for the client's address "
            "in the access log; 0: none, the peer's address (never more than there are, or "
            "clients choose their logged address)"
        },
    )

    @property
    def embedded(self) -> bool:
        """True when state lives in this process (no Redis)."""
        return self.redis_url == EMBEDDED_URL

    @property
    def demo(self) -> bool:
        """True for the embedded demo: no Redis, no API keys, and the reference adapter, whose
        stock is the in-memory store's own. Only the demo accepts the public demo key."""
        return not self.api_keys and self.embedded and self.adapter == "reference"

    @property
    def accepted_keys(self) -> tuple[str, ...]:
        """The API keys of the environment (the demo key for the embedded demo, see
        :attr:`demo`). With any other adapter none is accepted until TEVO_HOLD_API_KEYS is set:
        the demo key is printed in the README, and a POS's holds and invoices are real.

        Managed keys (``tevo-hold keys create``) live in Redis and are accepted besides these.
        """
        if self.demo:
            return (DEMO_API_KEY,)
        return self.api_keys

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from ``TEVO_HOLD_*`` environment variables."""
        return cls.from_mapping(os.environ if environ is None else environ)

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any]) -> Settings:
        """Settings from the ``TEVO_HOLD_*`` keys of ``mapping``; other keys are ignored.

        Values may be strings (as in the environment) or already typed (as in Flask config).
        Raises ConfigurationError naming the key of a value that does not parse, and for a
        ``TEVO_HOLD_*`` key that is no setting but close to one (``TEVO_HOLD_REDIS_ULR``): a
        setting misspelled would otherwise fall back to its default without a word (for the
        Redis URL, the embedded in-process store).
        """
        _check_spelling(mapping)
        _check_adapter(mapping.get(PREFIX + "ADAPTER"))
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            key = PREFIX + f.name.upper()
            raw = mapping.get(key)
            if raw is None or raw == "":
                continue
            parse = _PARSERS[f.name]
            try:
                values[f.name] = parse(raw) if isinstance(raw, str) else _typed(f.name, raw)
            except (TypeError, ValueError) as exc:
                # A secret (a field kept out of repr) is named by its type, never shown.
                given = f"={raw!r}" if f.repr else f" (given as {type(raw).__name__}, not shown)"
                raise ConfigurationError(f"{key}{given}: {f.metadata['help']} ({exc})") from None
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        """Raise ConfigurationError for settings that cannot work together."""
        if self.adapter == "http" and not self.pos_url:
            raise ConfigurationError(
                f"{PREFIX}ADAPTER=http needs {PREFIX}POS_URL, the base URL of the POS's API"
            )
        if self.adapter == "http" and self.lease <= self.pos_budget:
            raise ConfigurationError(
                f"{PREFIX}LEASE={self.lease:g} must exceed {PREFIX}POS_BUDGET={self.pos_budget:g}: "
                "a request's lease must outlast its POS call, or the worker may compensate a hold "
                "whose call is still running"
            )
        url = self.redis_url
        scheme = url.split("://", 1)[0].lower()
        if "://" not in url or scheme not in REDIS_SCHEMES:
            raise ConfigurationError(
                f"{PREFIX}REDIS_URL {url_scheme(url)}: expected redis://host:port/db (rediss:// "
                "for TLS), unix:///path.sock, redis+cluster://host:port[,host:port...] "
                "(rediss+cluster:// for TLS) for a Redis Cluster, "
                "redis+sentinel://host:port[,host:port...]/service_name[/db] for a master "
                "found through Sentinel, or memory:// for the embedded default"
            )
        if not embedded_url(url):
            from .connection import check_url

            check_url(url)


def embedded_url(url: str) -> bool:
    """Whether ``url``, a TEVO_HOLD_REDIS_URL (``""``: unset), is the embedded default.

    Its one spelling is ``memory://``: any other URL of the scheme memory (``MEMORY://``,
    ``memory:///``) raises ConfigurationError, rather than pass for Redis. Settings and
    server/gunicorn.conf.py (one worker for the embedded default) both ask this.
    """
    if url.split("://", 1)[0].lower() == "memory" and url != EMBEDDED_URL:
        raise ConfigurationError(
            f"{PREFIX}REDIS_URL: the embedded default is spelled {EMBEDDED_URL} exactly (lower "
            f"case, nothing after it), or leave {PREFIX}REDIS_URL unset; for Redis, use "
            "redis://host:port/db"
        )
    return url in ("", EMBEDDED_URL)


def url_scheme(url: str) -> str:
    """How an error names a URL setting it refuses: by its scheme (the part before ``://``)
    only, since the rest may hold a password in whatever shape a mistaken URL has (``user:pw@``
    with or without a scheme, a query's ``password=``), where :func:`redact_url` finds none."""
    scheme, sep, _ = url.partition("://")
    if sep and re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]{0,30}", scheme):
        return f"has the scheme {scheme!r}"
    return "is not a URL (scheme://...)"


def _typed(name: str, value: Any) -> Any:
    """A value given already typed (Flask config): check its type, parse lists of keys."""
    if name == "api_keys":
        if isinstance(value, list | tuple):
            return _key_list(value)
        raise TypeError("must be a list of strings or a comma-separated string")
    if name == "require_signature" and isinstance(value, bool):
        return value
    return _PARSERS[name](str(value))


def _key_list(items: list[Any] | tuple[Any, ...]) -> tuple[str, ...]:
    """The keys of a list given in Flask config, each item read as the environment variable is:
    split at commas (``[os.environ["TEVO_HOLD_API_KEYS"]]`` holding ``k1,k2`` mid-rotation is
    two keys), stripped, empty ones dropped (``[os.environ.get("K", "")]`` is no key, and warned
    of as none). An item that is no str is refused, never turned into its text: ``[None]`` (from
    ``os.environ.get`` of an unset variable) accepted the key "None", ``[b"k"]`` the key
    "b'k'". The error names the item's type only: a key is never shown."""
    for item in items:
        if item is None:
            raise TypeError("it holds None: an environment variable that is unset?")
        if isinstance(item, bytes | bytearray):
            raise TypeError(
                f"it holds {type(item).__name__}: decode each key to a str (.decode()), or the "
                "key accepted would be its repr, b'...'"
            )
        if not isinstance(item, str):
            raise TypeError(
                f"it holds an item of type {type(item).__name__}: each key must be a str"
            )
    return tuple(key for item in items for key in _keys(item))


_PARSERS: dict[str, Callable[[str], Any]] = {
    "redis_url": str,
    "api_keys": _keys,
    "hold_ttl": seconds,
    "lease": seconds,
    "retention": seconds,
    "key_prefix": str,
    "redis_timeout": seconds,
    "max_body": _positive_int,
    "inventory_file": _optional_str,
    "adapter": str,
    "pos_url": _optional_str,
    "pos_api_key": _optional_str,
    "pos_auth_header": str,
    "pos_ca_file": _optional_str,
    "pos_hold_path": str,
    "pos_release_path": str,
    "pos_invoice_path": str,
    "pos_timeout": seconds,
    "pos_budget": seconds,
    "pos_retries": _non_negative_int,
    "retry_base": seconds,
    "retry_cap": seconds,
    "worker_interval": seconds,
    "pos_health_path": _optional_str,
    "require_signature": _bool,
    "rate_limit": _rate_limit,
    "proxy_hops": _non_negative_int,
}


def _check_spelling(mapping: Mapping[str, Any]) -> None:
    """ConfigurationError for a ``TEVO_HOLD_*`` key of ``mapping`` that looks like a misspelled
    setting. Keys far from every name are left alone: another tool's variables may share the
    prefix."""
    known = {PREFIX + f.name.upper() for f in dataclasses.fields(Settings)} | OTHER_VARIABLES
    for key in mapping:
        if not isinstance(key, str) or not key.startswith(PREFIX) or key in known:
            continue
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.85)
        if close:
            raise ConfigurationError(
                f"{key} is not a tevo-hold setting: did you mean {close[0]}? (Unset it, or "
                "rename it: as it is, the setting it resembles keeps its default.)"
            )


def _check_adapter(value: Any) -> None:
    """ConfigurationError for a TEVO_HOLD_ADAPTER that is not text: an adapter class or instance
    put in app.config, which str() turned into "<class '...'>" and the import into 'No module
    named "<class ..."'. The worker and the tevo-hold command read the setting from the
    environment, as text: one spelling serves them all."""
    if value is None or isinstance(value, str):
        return
    if isinstance(value, type):
        given = f"={value!r}, a class"
        name = f"{value.__module__}:{value.__qualname__}"
        text = (
            " (a class of __main__ or of a function has none: move it to a module)"
            if value.__module__ == "__main__" or "<" in name
            else f' ("{name}" for this class)'
        )
    else:
        given, text = f" was given an object ({type(value).__name__})", ""
    raise ConfigurationError(
        f"{PREFIX}ADAPTER{given}: the setting takes text, reference, http or "
        f'"package.module:Class"{text}, as the worker and the tevo-hold command read it from '
        "the environment. An adapter you build yourself goes in through a service: "
        "TevoHold(app, service=HoldService(ledger, adapter, ...), settings=settings), as in "
        'docs/pos-vendors.md, "Plug it in" (give the worker and the tevo-hold command '
        f"{PREFIX}ADAPTER all the same)."
    )
