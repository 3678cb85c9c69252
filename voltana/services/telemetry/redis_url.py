"""Redis URLs: checked, combined with a password kept out of the URL, and redacted for logs.

Accepted forms (redis-py's): ``redis://[[user]:password@]host[:port][/db]``, ``rediss://...``
(TLS; ``?ssl_ca_certs=/path/ca.pem`` names the CA) and ``unix:///path/redis.sock``. A password
may instead come separately (``--redis-password-file`` / $VOLTANA_REDIS_PASSWORD), so it is
never on a command line. Nothing Voltana logs or raises shows the password.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from voltana.errors import ConfigError

REDIS_SCHEMES = ("redis", "rediss", "unix")
REDACTED = "***"


def redact_redis_url(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``; works on malformed URLs too."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.partition(":")[0]
    netloc = f"{user}:{REDACTED}@{hostport}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def check_redis_url(url: str, *, password: str | None = None) -> None:
    """ConfigError (showing the URL redacted) unless redis-py can use ``url``."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise ConfigError(f"bad Redis URL {redact_redis_url(url)!r}: {error}") from None
    if parts.scheme not in REDIS_SCHEMES:
        raise ConfigError(
            f"Redis URL {redact_redis_url(url)!r} must start with redis://, rediss:// or unix://"
        )
    if parts.scheme != "unix" and not parts.hostname:
        raise ConfigError(f"Redis URL {redact_redis_url(url)!r} names no host")
    if port == 0:
        raise ConfigError(f"Redis URL {redact_redis_url(url)!r} has port 0")
    if password is not None and parts.password is not None:
        raise ConfigError(
            f"the Redis URL {redact_redis_url(url)!r} has a password and one was given "
            "separately too; use one of them"
        )
