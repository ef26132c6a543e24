"""Account credentials: password hashing, name/device-id rules, signed session tokens.

Pure: no clock, no storage, no logging. The only side effect is ``os.urandom`` for a salt
when the caller passes none.

* **Passwords** are hashed with scrypt (n=2**14, r=8, p=1, 32-byte key, 16-byte random salt,
  ~16 MiB and ~50 ms per hash) and stored as ``scrypt$1$<n>$<r>$<p>$<salt hex>$<hash hex>``, so
  the parameters can be raised later (``needs_rehash``) without breaking stored hashes.
  Verification compares in constant time.
* **Names** are 1–32 ASCII letters, digits, ``_``, ``-`` or ``.``; uniqueness is
  case-insensitive (the store's business). **Device ids** are 1–256 printable ASCII characters
  without spaces; a device id is a bearer credential, so stores keep only ``device_key`` (its
  SHA-256), never the id itself.
* **Session tokens** (65 bytes) let a client resume after a dropped connection::

      version u8 (1) | player_id u64 | expires_at u64 (unix ms) | nonce 16 | HMAC-SHA256 32

  all big-endian; the MAC covers a domain label and the first 33 bytes. Verification checks
  length and version (``malformed``), then the MAC (``bad_signature``), and only then trusts
  the expiry (``expired``). Tokens are stateless: they cannot be revoked one by one before
  they expire (rotate the secret to revoke all).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import re
import struct
from typing import Literal

# --- passwords ----------------------------------------------------------------------------------

SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
SCRYPT_DKLEN = 32
SALT_SIZE = 16
_HASH_SCHEME = "scrypt"
_HASH_VERSION = "1"
_MAX_SCRYPT_N = 2**20
_MAX_SCRYPT_MEMORY = 2**28
"""Upper bounds accepted when parsing a stored hash, so a bad row cannot ask for gigabytes."""

MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 256


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, dklen: int) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8"),
        salt=salt,
        n=n,
        r=r,
        p=p,
        dklen=dklen,
        maxmem=128 * r * (n + p + 2) + 1024 * 1024,
    )


def hash_password(
    password: str,
    salt: bytes | None = None,
    *,
    n: int = SCRYPT_N,
    r: int = SCRYPT_R,
    p: int = SCRYPT_P,
) -> str:
    """The encoded scrypt hash of ``password`` (a fresh random salt unless one is given)."""
    if salt is None:
        salt = os.urandom(SALT_SIZE)
    if len(salt) != SALT_SIZE:
        raise ValueError(f"salt must be {SALT_SIZE} bytes, got {len(salt)}")
    _check_params(n, r, p)
    digest = _scrypt(password, salt, n, r, p, SCRYPT_DKLEN)
    return f"{_HASH_SCHEME}${_HASH_VERSION}${n}${r}${p}${salt.hex()}${digest.hex()}"


def verify_password(password: str, encoded: str) -> bool:
    """Whether ``password`` matches ``encoded``; ValueError if ``encoded`` is not a valid hash."""
    n, r, p, salt, expected = _parse_hash(encoded)
    actual = _scrypt(password, salt, n, r, p, len(expected))
    return hmac.compare_digest(actual, expected)


def needs_rehash(encoded: str) -> bool:
    """Whether ``encoded`` uses other parameters than the current defaults (rehash on login)."""
    n, r, p, salt, digest = _parse_hash(encoded)
    return (n, r, p, len(salt), len(digest)) != (
        SCRYPT_N,
        SCRYPT_R,
        SCRYPT_P,
        SALT_SIZE,
        SCRYPT_DKLEN,
    )


def _check_params(n: int, r: int, p: int) -> None:
    if not (2 <= n <= _MAX_SCRYPT_N and n & (n - 1) == 0):
        raise ValueError(f"scrypt n must be a power of two in 2..{_MAX_SCRYPT_N}, got {n}")
    if not (1 <= r <= 32 and 1 <= p <= 16):
        raise ValueError(f"scrypt r must be 1..32 and p 1..16, got r={r} p={p}")
    if 128 * n * r > _MAX_SCRYPT_MEMORY:
        raise ValueError(f"scrypt n={n} r={r} needs more than {_MAX_SCRYPT_MEMORY} bytes")


def _parse_hash(encoded: str) -> tuple[int, int, int, bytes, bytes]:
    parts = encoded.split("$")
    if len(parts) != 7 or parts[0] != _HASH_SCHEME or parts[1] != _HASH_VERSION:
        raise ValueError("not a scrypt$1 password hash")
    try:
        n, r, p = (int(x, 10) for x in parts[2:5])
        salt = bytes.fromhex(parts[5])
        digest = bytes.fromhex(parts[6])
    except ValueError:
        raise ValueError("malformed scrypt$1 password hash") from None
    _check_params(n, r, p)
    if not salt or not 16 <= len(digest) <= 64:
        raise ValueError("malformed scrypt$1 password hash: bad salt or hash length")
    return n, r, p, salt, digest


# --- names and device ids ----------------------------------------------------------------------

MAX_NAME_LENGTH = 32
MAX_DEVICE_ID_LENGTH = 256
_NAME_RE = re.compile(r"[A-Za-z0-9_.\-]+")
_DEVICE_RE = re.compile(r"[\x21-\x7e]+")


def validate_name(name: str) -> str:
    """``name`` if it is a valid player name, else ValueError saying why."""
    if not 1 <= len(name) <= MAX_NAME_LENGTH:
        raise ValueError(f"name must be 1 to {MAX_NAME_LENGTH} characters, got {len(name)}")
    if _NAME_RE.fullmatch(name) is None:
        raise ValueError("name may contain only ASCII letters, digits, '_', '-' and '.'")
    return name


def validate_device_id(device_id: str) -> str:
    """``device_id`` if valid (printable ASCII, no spaces), else ValueError saying why."""
    if not 1 <= len(device_id) <= MAX_DEVICE_ID_LENGTH:
        raise ValueError(
            f"device id must be 1 to {MAX_DEVICE_ID_LENGTH} characters, got {len(device_id)}"
        )
    if _DEVICE_RE.fullmatch(device_id) is None:
        raise ValueError("device id may contain only printable ASCII characters without spaces")
    return device_id


def validate_password(password: str) -> str:
    """``password`` if acceptable for a new account, else ValueError saying why."""
    if not MIN_PASSWORD_LENGTH <= len(password) <= MAX_PASSWORD_LENGTH:
        raise ValueError(
            f"password must be {MIN_PASSWORD_LENGTH} to {MAX_PASSWORD_LENGTH} characters"
        )
    return password


def device_key(device_id: str) -> bytes:
    """What a store keeps for a device id: its SHA-256 (32 bytes). Validates the id."""
    return hashlib.sha256(validate_device_id(device_id).encode("ascii")).digest()


# --- session tokens ------------------------------------------------------------------------------

TOKEN_VERSION = 1
NONCE_SIZE = 16
_TOKEN_BODY = struct.Struct(">BQQ16s")
_MAC_SIZE = 32
TOKEN_SIZE = _TOKEN_BODY.size + _MAC_SIZE
_TOKEN_DOMAIN = b"framesync/session-token\x00"
MIN_SECRET_SIZE = 16

SessionTokenReason = Literal["malformed", "bad_signature", "expired"]


class SessionTokenError(Exception):
    """A session token was refused; ``reason`` is malformed, bad_signature or expired."""

    def __init__(self, reason: SessionTokenReason) -> None:
        super().__init__(reason)
        self.reason: SessionTokenReason = reason


def _mac(secret: bytes, body: bytes) -> bytes:
    if len(secret) < MIN_SECRET_SIZE:
        raise ValueError(f"session secret must be at least {MIN_SECRET_SIZE} bytes")
    return hmac.new(secret, _TOKEN_DOMAIN + body, hashlib.sha256).digest()


def issue_session_token(secret: bytes, player_id: int, expires_at: float, *, nonce: bytes) -> bytes:
    """A token for ``player_id`` valid until ``expires_at`` (unix seconds, kept to the ms).

    ``nonce`` is 16 random bytes from the caller (``os.urandom(16)``).
    """
    if not 0 <= player_id < 2**64:
        raise ValueError("player_id must be a u64")
    if not (math.isfinite(expires_at) and expires_at >= 0):
        raise ValueError("expires_at must be a finite time >= 0")
    expires_ms = math.floor(expires_at * 1000)
    if expires_ms >= 2**64:
        raise ValueError("expires_at is too far in the future")
    if len(nonce) != NONCE_SIZE:
        raise ValueError(f"nonce must be {NONCE_SIZE} bytes, got {len(nonce)}")
    body = _TOKEN_BODY.pack(TOKEN_VERSION, player_id, expires_ms, nonce)
    return body + _mac(secret, body)


def verify_session_token(secret: bytes, token: bytes, now: float) -> int:
    """The player id in ``token``, or SessionTokenError if it is malformed, forged or expired."""
    if len(token) != TOKEN_SIZE or token[0] != TOKEN_VERSION:
        raise SessionTokenError("malformed")
    body, tag = token[: _TOKEN_BODY.size], token[_TOKEN_BODY.size :]
    if not hmac.compare_digest(_mac(secret, body), tag):
        raise SessionTokenError("bad_signature")
    _, player_id, expires_ms, _ = _TOKEN_BODY.unpack(body)
    if not now * 1000 < expires_ms:  # written so that a NaN ``now`` fails closed
        raise SessionTokenError("expired")
    return int(player_id)
