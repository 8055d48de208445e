"""API keys for the Serve application: bearer tokens, stored only as SHA-256 hashes, each with a rate limit.

Rules (docs/serve.md, "Locking the endpoints"):

* a request without ``Authorization: Bearer <key>`` gets 401 (``WWW-Authenticate: Bearer``); a key
  that is not one of ours gets 403;
* each key has a rate limit (a token bucket: ``rate_per_minute``, bursts of ``burst``); a key over it
  gets 429 with ``Retry-After``;
* ``/healthz`` stays open, and so do the page at ``/`` (it asks for a key and sends it with each
  call), ``/docs`` and ``/openapi.json`` (the schema, no model);
* ``auth.mode: none`` is allowed only on a loopback address: serving on 0.0.0.0 without keys is
  refused when the config is read.

Keys come from ``auth.keys_file`` (lines ``NAME sha256:HEX [RATE_PER_MINUTE]``; ``#`` comments) and
from the environment variable named by ``auth.keys_env`` (``NAME:sha256:HEX,...``): hashes only,
never a key, so neither the file, the Serve config nor the application's arguments hold a secret.
``python jobs/api_keys.py add NAME --file FILE`` makes a key, prints it once, and appends its hash.
Tokens are 32 random bytes, so an unsalted SHA-256 cannot be reversed by guessing.

Rate limits are counted per ingress replica: with N ingress replicas a key may make up to N times
its rate. The limiter forgets nothing but the bucket of each key (a few floats).
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import os
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

MODES = ("none", "keys")
#: Paths answered without a key.
OPEN_PATHS = ("/healthz", "/", "/docs", "/openapi.json", "/docs/oauth2-redirect")
_HASH = re.compile(r"^sha256:([0-9a-f]{64})$")
_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")


@dataclass
class AuthConfig:
    """Who may call the models (bearer API keys) and how often."""

    mode: str = "none"
    """``keys``: every route but the open ones needs a key; ``none``: no keys, allowed only when the
    application listens on a loopback address (127.0.0.1, ::1)."""
    keys_file: str = ""
    """A file of key hashes, one ``NAME sha256:HEX [RATE_PER_MINUTE]`` per line (``python jobs/api_keys.py
    add NAME --file FILE`` writes one). Keep it out of the repository."""
    keys_env: str = "GALENO_API_KEYS"
    """Environment variable with more key hashes: ``NAME:sha256:HEX[:RATE_PER_MINUTE],...``."""
    rate_per_minute: float = 600.0
    """Default requests per minute per key (a key's line may set its own)."""
    burst: int = 60
    """Requests a key may make at once before the rate applies."""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"auth.mode must be one of {MODES}")
        if self.rate_per_minute <= 0 or self.burst < 1:
            raise ValueError("auth.rate_per_minute must be > 0 and auth.burst >= 1")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(auth: AuthConfig, host: str) -> None:
    """Refuse ``auth.mode: none`` on an address other machines can reach."""
    if auth.mode == "none" and not is_loopback(host):
        raise ValueError(f"refusing to serve on {host} without API keys: anyone who reaches this machine could "
                         "call the models. Set auth.mode=keys with auth.keys_file=FILE (python jobs/api_keys.py add "
                         "NAME --file FILE makes a key), or listen on 127.0.0.1 behind your own gateway")


def hash_key(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key() -> str:
    """A fresh bearer token (32 random bytes, URL-safe)."""
    return "glk_" + secrets.token_urlsafe(32)


@dataclass
class Key:
    name: str
    rate_per_minute: float


def _entry(name: str, digest: str, rate: Optional[str], where: str, default_rate: float) -> tuple[str, Key]:
    if not _NAME.match(name):
        raise ValueError(f"{where}: key name {name!r} must be 1-64 letters, digits or _.@-")
    if not _HASH.match(digest):
        raise ValueError(f"{where}: {name}'s hash must be sha256:<64 hex digits> (never the key itself)")
    try:
        per_minute = float(rate) if rate else default_rate
    except ValueError:
        raise ValueError(f"{where}: {name}'s rate {rate!r} is not a number") from None
    if per_minute <= 0:
        raise ValueError(f"{where}: {name}'s rate must be > 0")
    return digest, Key(name, per_minute)


def load_keys(auth: AuthConfig) -> dict[str, Key]:
    """Key hashes by hash, from the file and the environment; raises ``ValueError`` on a malformed entry."""
    keys: dict[str, Key] = {}
    if auth.keys_file:
        path = Path(auth.keys_file).expanduser()
        if not path.is_file():
            raise ValueError(f"auth.keys_file {path} does not exist (python jobs/api_keys.py add NAME --file {path})")
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            if len(parts) not in (2, 3):
                raise ValueError(f"{path}:{n}: expected NAME sha256:HEX [RATE_PER_MINUTE]")
            digest, key = _entry(parts[0], parts[1], parts[2] if len(parts) == 3 else None, f"{path}:{n}",
                                 auth.rate_per_minute)
            keys[digest] = key
    for n, item in enumerate(filter(None, (x.strip() for x in os.environ.get(auth.keys_env, "").split(","))), 1):
        name, _, rest = item.partition(":")
        algo, _, rest = rest.partition(":")
        hexdigest, _, rate = rest.partition(":")
        digest, key = _entry(name, f"{algo}:{hexdigest}", rate or None, f"${auth.keys_env} entry {n}",
                             auth.rate_per_minute)
        keys[digest] = key
    return keys


def settings(auth: AuthConfig) -> dict[str, Any]:
    """What the ingress replicas need (hashes, never keys): built once by the driver or Serve's builder."""
    if auth.mode == "none":
        return {"mode": "none"}
    keys = load_keys(auth)
    if not keys:
        raise ValueError(f"auth.mode=keys but no key hashes were found in auth.keys_file ({auth.keys_file or 'unset'}) "
                         f"or ${auth.keys_env}: add one with python jobs/api_keys.py add NAME --file FILE")
    return {"mode": "keys", "burst": auth.burst,
            "keys": {digest: {"name": k.name, "rate_per_minute": k.rate_per_minute} for digest, k in keys.items()}}


@dataclass
class _Bucket:
    tokens: float
    at: float


@dataclass
class Limiter:
    """A token bucket per key: ``burst`` at once, then ``rate_per_minute``."""

    burst: int
    buckets: dict[str, _Bucket] = field(default_factory=dict)

    def take(self, name: str, rate_per_minute: float, now: Optional[float] = None) -> float:
        """0 if the call may go ahead (a token taken), else the seconds until a token is there."""
        now = time.monotonic() if now is None else now
        per_second = rate_per_minute / 60.0
        b = self.buckets.setdefault(name, _Bucket(float(self.burst), now))
        b.tokens = min(float(self.burst), b.tokens + (now - b.at) * per_second)
        b.at = now
        if b.tokens >= 1.0:
            b.tokens -= 1.0
            return 0.0
        return (1.0 - b.tokens) / per_second


class Auth:
    """Pure ASGI middleware: the key check and the rate limit, before anything reads the body."""

    def __init__(self, app, settings: dict[str, Any], error) -> None:
        self.app, self.error = app, error
        self.keys = settings.get("keys", {})
        self.limiter = Limiter(int(settings.get("burst", 1)))

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "websocket":  # no websocket routes: refused rather than let through unchecked
            return await send({"type": "websocket.close", "code": 1008})
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "/")
        root = scope.get("root_path", "").rstrip("/")
        if root and (path == root or path.startswith(root + "/")):
            path = path[len(root):] or "/"
        if path in OPEN_PATHS:
            return await self.app(scope, receive, send)
        header = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1").strip()
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return await self.error(401, "unauthorized", "this endpoint needs an API key: send the header "
                                    "'Authorization: Bearer <key>'", {"WWW-Authenticate": 'Bearer realm="galeno"'}
                                    )(scope, receive, send)
        digest = hash_key(token.strip())
        key = self.keys.get(digest)
        if key is None:
            return await self.error(403, "forbidden", "this API key is not valid")(scope, receive, send)
        wait = self.limiter.take(digest, float(key["rate_per_minute"]))  # per key, even if two share a name
        if wait > 0:
            return await self.error(429, "rate_limited", f"key {key['name']} is over its rate of "
                                    f"{key['rate_per_minute']:g} requests per minute; retry later",
                                    {"Retry-After": str(max(1, math.ceil(wait)))})(scope, receive, send)
        return await self.app(scope, receive, send)


def main(argv: Optional[list[str]] = None) -> int:
    """``jobs/api_keys.py``: add, list or remove keys in a hash file; hash a key read from stdin."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="api_keys.py", description="API keys of the Serve application: the "
                                     "file holds hashes only; a new key is printed once.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("add", "list", "remove"):
        p = sub.add_parser(name)
        if name != "list":
            p.add_argument("name")
        p.add_argument("--file", required=True, help="the key-hash file (auth.keys_file)")
        if name == "add":
            p.add_argument("--rate", type=float, help="requests per minute for this key (default: auth.rate_per_minute)")
    sub.add_parser("hash", help="read a key on stdin, print its sha256:HEX")
    args = parser.parse_args(argv)
    if args.command == "hash":
        print(hash_key(sys.stdin.readline().strip()))
        return 0
    path = Path(args.file).expanduser()
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    names = [ln.split()[0] for ln in lines if ln.split("#", 1)[0].strip()]
    if args.command == "list":
        print("\n".join(names) if names else f"no keys in {path}")
        return 0
    if not _NAME.match(args.name):
        parser.error(f"key name {args.name!r} must be 1-64 letters, digits or _.@-")
    if args.command == "remove":
        if args.name not in names:
            parser.error(f"no key named {args.name} in {path}")
        kept = [ln for ln in lines if not (ln.split("#", 1)[0].strip() and ln.split()[0] == args.name)]
        path.write_text("".join(ln + "\n" for ln in kept), encoding="utf-8")
        print(f"removed {args.name} from {path} (replicas read keys when the application is deployed: redeploy)")
        return 0
    if args.name in names:
        parser.error(f"{path} already has a key named {args.name}: remove it first")
    if args.rate is not None and args.rate <= 0:
        parser.error("--rate must be > 0")
    key = new_key()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(f"{args.name} {hash_key(key)}" + (f" {args.rate:g}" if args.rate else "") + "\n")
    os.chmod(path, 0o600)
    print(key)
    print(f"# the key of {args.name}: shown once, only its hash is in {path}", file=sys.stderr)
    return 0
