"""API keys and request signatures.

Two kinds of API key are accepted:

- **Environment keys**, ``TEVO_HOLD_API_KEYS`` (comma-separated): the bootstrap, compared in
  constant time, each named in logs, metrics and the rate limit by :func:`env_name`: ``env-`` and
  the first 8 hex digits of its SHA-256, the same whatever other keys the setting lists (a name by
  position passed to the next key when one was removed, and with it the old key's rate limit).
- **Managed keys**, made by ``tevo-hold keys create NAME`` and kept in Redis by :class:`KeyStore`.
  A managed key is ``th_`` and 43 URL-safe characters (32 random bytes). Redis holds only its
  SHA-256 digest: the plaintext is shown once, when it is made, and is found nowhere after. Plain
  SHA-256 (no salt, no slow hash) is the standard for random high-entropy tokens like these: the
  point of a slow, salted hash is to make guessing a *low-entropy* password expensive, and 256
  random bits cannot be guessed; a fast hash also keeps the lookup one cheap Redis call per
  request, made only for a key of that exact shape (:data:`MANAGED_PATTERN`). Each record keeps
  the key's name, a prefix to recognise it by (``th_AbCd1234``), created and last-used times
  (last-used is written at most every ``touch_interval`` seconds, not on every request) and its
  revocation. Nothing is cached: a revocation holds for the next request on every process.

Request signing (off unless ``TEVO_HOLD_REQUIRE_SIGNATURE``) follows TEvo's own API:
``X-Signature`` is the base64 HMAC-SHA256, under the API key, of :func:`string_to_sign`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from . import errors
from ._redis import RedisClient, Script, translate_errors
from .keys import KeySpace

__all__ = [
    "MANAGED_PATTERN",
    "MANAGED_PREFIX",
    "STRONG_KEY_CHARS",
    "STRONG_KEY_COMMAND",
    "ApiKey",
    "Authenticator",
    "Identity",
    "KeyStore",
    "digest_of",
    "env_name",
    "sign",
    "string_to_sign",
    "verify_signature",
]

#: How a managed key starts.
MANAGED_PREFIX = "th_"
#: The random bytes of a managed key: its text is ``th_`` and their URL-safe base64 (no ``=``).
MANAGED_BYTES = 32
#: A managed key's exact shape, ``th_`` and 43 URL-safe characters: only a key sent in this
#: shape is looked up in Redis. Any other is refused at once, with no Redis call: a key starting
#: with ``th_`` cost anyone without a key a script call on the shared Redis (and, while Redis
#: was slow, half a second and a 503 rather than a 401).
MANAGED_PATTERN = re.compile(r"th_[A-Za-z0-9_-]{43}")  # 43: base64 of 32 bytes, unpadded
#: Characters of a managed key kept (with ``th_``) as its recognisable prefix.
PREFIX_CHARS = 8
#: Names of managed keys: letters, digits, ``.``, ``_``, ``-``; ``env-`` is reserved. Matched
#: whole (fullmatch): ``$`` also matches before a final newline, and "partner\n" passed for a
#: second key that reads as "partner".
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: How an environment key is named: ``env-`` and this many hex digits of its SHA-256.
ENV_NAME_CHARS = 8
#: An environment key shorter than this is warned of at start: tevo-hold does not throttle
#: failed keys (the proxy in front should), so a short key may be guessed. A managed key, or
#: ``secrets.token_urlsafe(32)``, is 43 characters or more.
STRONG_KEY_CHARS = 32
#: How to make a strong key, as the warning and the docs say it.
STRONG_KEY_COMMAND = 'python3 -c "import secrets; print(secrets.token_urlsafe(32))"'


def digest_of(key: str) -> str:
    """The SHA-256 digest (hex) under which a managed key is stored."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def env_name(key: str) -> str:
    """The name of the environment key ``key`` (TEVO_HOLD_API_KEYS) in logs, metrics and the
    rate limit: ``env-`` and the first 8 hex digits of its SHA-256 (``printf %s "$KEY" |
    sha256sum | cut -c1-8``). It depends on the key alone, so a key keeps its name and rate
    limit while others are added or removed beside it, and a new key never takes an old one's.
    32 bits of a digest tell nothing of a random key; they do confirm a guess of a guessable
    one, as any use of such a key would."""
    return "env-" + digest_of(key)[:ENV_NAME_CHARS]


def _time(ms: object) -> datetime | None:
    if ms in (None, "", b""):
        return None
    return datetime.fromtimestamp(int(str(ms)) / 1000, tz=UTC)


def _text(value: object) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A managed key as stored: never the key itself."""

    name: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


@dataclass(frozen=True, slots=True)
class Identity:
    """Who sent a request: the key's name (what logs, metrics and the rate limit use)."""

    name: str
    managed: bool


class KeyStore:
    """The managed API keys, in the deployment's Redis (keys of one hash slot, ``{keys}``)."""

    def __init__(
        self, client: RedisClient, *, keys: KeySpace | None = None, touch_interval: float = 60.0
    ) -> None:
        self.client = client
        self.keys = keys or KeySpace()
        self.touch_ms = int(touch_interval * 1000)
        self._script = Script(client, "apikeys")

    def create(self, name: str) -> tuple[ApiKey, str]:
        """Make a key named ``name``; return its record and the plaintext key, shown only now.

        Raises InvalidRequest if the name is malformed, reserved or already used (revoked keys
        keep their names).
        """
        if not NAME_PATTERN.fullmatch(name) or name.startswith("env-"):
            raise errors.InvalidRequest(
                f"Key name {name!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a "
                "letter or digit; names starting with 'env-' are reserved for TEVO_HOLD_API_KEYS."
            )
        plaintext = MANAGED_PREFIX + secrets.token_urlsafe(MANAGED_BYTES)
        prefix = plaintext[: len(MANAGED_PREFIX) + PREFIX_CHARS]
        digest = digest_of(plaintext)
        reply = self._script(
            [self.keys.api_key_names(), self.keys.api_key(digest)], ["create", name, prefix, digest]
        )
        if reply[0] != "ok":
            raise errors.InvalidRequest(f"A key named {name!r} exists already (perhaps revoked).")
        created = _time(reply[1])
        assert created is not None
        return ApiKey(name=name, prefix=prefix, created_at=created), plaintext

    def lookup(self, plaintext: str) -> tuple[str, bool] | None:
        """``(name, revoked)`` of the managed key ``plaintext``, or None if there is none.

        One Redis call; it records the use (at most every ``touch_interval`` seconds).
        """
        record = self.keys.api_key(digest_of(plaintext))
        reply = self._script([self.keys.api_key_names(), record], ["lookup", self.touch_ms])
        if not reply:
            return None
        return str(reply[0]), bool(reply[1])

    def get(self, name: str) -> ApiKey | None:
        """The record of the key named ``name``, or None."""
        with translate_errors():
            digest = self.client.hget(self.keys.api_key_names(), name)
            if digest is None:
                return None
            fields = self.client.hgetall(self.keys.api_key(_text(digest)))
        return self._record(fields)

    def list(self) -> list[ApiKey]:
        """Every managed key, revoked ones included, oldest first."""
        return sorted(self._all(), key=lambda k: (k.created_at, k.name))

    def revoke(self, name: str) -> ApiKey:
        """Revoke the key named ``name`` at once, for every process. Repeating it is harmless.

        Raises NotFound if there is no such key.
        """
        with translate_errors():
            digest = self.client.hget(self.keys.api_key_names(), name)
        if digest is not None:
            record = self.keys.api_key(_text(digest))
            reply = self._script(
                [self.keys.api_key_names(), record], ["revoke", name, _text(digest)]
            )
            if reply[0] == "ok":
                key = self.get(name)
                assert key is not None
                return key
        raise errors.NotFound(f"No API key is named {name!r}.")

    def _all(self) -> Iterator[ApiKey]:
        with translate_errors():
            names = self.client.hgetall(self.keys.api_key_names())
            pipe = self.client.pipeline(transaction=False)
            for digest in names.values():
                pipe.hgetall(self.keys.api_key(_text(digest)))
            records = pipe.execute()
        for fields in records:
            key = self._record(fields)
            if key is not None:
                yield key

    @staticmethod
    def _record(fields: Mapping[Any, Any]) -> ApiKey | None:
        f = {_text(k): _text(v) for k, v in fields.items()}
        created = _time(f.get("created_at"))
        if "name" not in f or created is None:
            return None
        return ApiKey(
            name=f["name"],
            prefix=f.get("prefix", ""),
            created_at=created,
            last_used_at=_time(f.get("last_used_at")),
            revoked_at=_time(f.get("revoked_at")),
        )


class Authenticator:
    """Tells who sent a key: an environment key (constant-time) or a managed one (Redis)."""

    def __init__(self, env_keys: Sequence[str], store: KeyStore | None) -> None:
        self._env = tuple((k.encode("utf-8"), env_name(k)) for k in env_keys)
        self.store = store

    def identify(self, sent: str) -> Identity:
        """The identity of the key ``sent``; raises Unauthorized if it is not a valid one.

        Raises Unavailable if the key has to be looked up and Redis cannot be reached.
        """
        # WSGI hands headers over as latin-1 text: recover the bytes that were sent.
        raw = sent.encode("latin-1", "replace")
        found: str | None = None
        for key, name in self._env:  # every key is compared, in constant time
            if hmac.compare_digest(raw, key) and found is None:
                found = name
        if found is not None:
            return Identity(found, managed=False)
        if self.store is not None and MANAGED_PATTERN.fullmatch(sent):
            looked_up = self.store.lookup(raw.decode("latin-1"))
            if looked_up is not None:
                name, revoked = looked_up
                if revoked:
                    raise errors.Unauthorized("The API key was revoked.")
                return Identity(name, managed=True)
        raise errors.Unauthorized("The API key is not valid.")


# -- request signing -------------------------------------------------------------------------


def string_to_sign(method: str, host: str, path: str, query: str, body: bytes) -> bytes:
    """What ``X-Signature`` signs, as TEvo's API defines it for its own requests.

    ``METHOD host path?`` followed by the body when there is one, else by the query string:

    - ``METHOD`` upper-case (``POST``);
    - ``host`` the ``Host`` header without its port, lower-case (``pos.example.com``);
    - ``path`` as sent, percent-encoding and all, without the query (``/v1/holds``);
    - then ``?`` always, even with no query and no body;
    - then the body's bytes exactly as sent, or, with no body, the query string as sent (without
      its ``?``; may be empty). A GET has no body here: the API never reads one (HTTP gives it no
      meaning), so it signs its query string whatever was sent.

    ``POST /v1/holds`` with body ``{"a":1}`` on ``pos.example.com:8443`` signs
    ``POST pos.example.com/v1/holds?{"a":1}``; ``GET /v1/holds/g1`` signs
    ``GET pos.example.com/v1/holds/g1?``.
    """
    head = f"{method.upper()} {_bare_host(host)}{path}?"
    return head.encode("latin-1") + (body if body else query.encode("latin-1"))


def sign(
    key: str | bytes, method: str, host: str, path: str, query: str = "", body: bytes = b""
) -> str:
    """The ``X-Signature`` of a request: base64 of HMAC-SHA256 under ``key`` (its UTF-8 bytes)."""
    secret = key.encode("utf-8") if isinstance(key, str) else key
    mac = hmac.new(secret, string_to_sign(method, host, path, query, body), "sha256")
    return base64.b64encode(mac.digest()).decode("ascii")


def verify_signature(
    signature: str | None,
    key: str | bytes,
    *,
    method: str,
    host: str,
    path: str,
    query: str,
    body: bytes,
) -> None:
    """Raise InvalidSignature unless ``signature`` signs this request under ``key``.

    ``host`` is the Host header as sent; one that is no host name (a ``/`` in it, say, which
    would move the line between host and path) is refused, never signed."""
    if not _HOST.fullmatch(host.strip()):
        raise errors.InvalidSignature(
            "The Host header is not a host name (letters, digits, '.', '-', '_', a port, or an "
            "IPv6 address in brackets): a signed request needs one."
        )
    if not signature:
        raise errors.InvalidSignature(
            "Sign the request: X-Signature must be the base64 HMAC-SHA256, under your API key, "
            "of 'METHOD host path?' followed by a POST's body (or, with none, and for a GET, "
            "the query string)."
        )
    expected = sign(key, method, host, path, query, body)
    if not hmac.compare_digest(signature.strip().encode("latin-1", "replace"), expected.encode()):
        raise errors.InvalidSignature(
            "X-Signature does not match this request (method, host without port, path as sent, "
            "and the body, or with none the query string); see the README for the exact string "
            "that is signed."
        )


#: A Host header that names a host: a name or IPv4 address, or an IPv6 one in brackets, and a
#: port. (werkzeug's request.host reads any other as "", which would sign as no host at all.)
_HOST = re.compile(r"(?:[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")


def _bare_host(host: str) -> str:
    """``host`` without a port: ``a.example:8000`` -> ``a.example``, ``[::1]:80`` -> ``[::1]``."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1] if "]" in host else host
    return host.rpartition(":")[0] if host.count(":") == 1 else host
