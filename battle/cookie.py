"""Stateless challenge cookies: prove a client owns its source address before any state.

A cookie is a keyed BLAKE2b tag over (epoch, address, ticket) under a secret derived per
epoch from one server secret, so secrets rotate without storage and a cookie is valid only
for the current and the previous epoch. Verifying it is a hash, far cheaper than the AEAD.
"""

from __future__ import annotations

import hashlib
import hmac
import struct

from battle.wire import COOKIE_SIZE

COOKIE_EPOCH = 10.0
"""Seconds per secret epoch; cookies live between one and two epochs."""
_EPOCH = struct.Struct("<I")
_TAG_SIZE = COOKIE_SIZE - _EPOCH.size

Address = tuple[str, int]


def _address_bytes(addr: Address) -> bytes:
    return f"{addr[0]}|{addr[1]}".encode()


class CookieJar:
    """Issues and checks cookies; holds only the root secret and a per-epoch key cache."""

    __slots__ = ("_keys", "_secret")

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("cookie secret must be at least 16 bytes")
        self._secret = secret
        self._keys: dict[int, bytes] = {}

    def _key(self, epoch: int) -> bytes:
        key = self._keys.get(epoch)
        if key is None:
            if len(self._keys) > 4:
                self._keys.clear()
            key = hashlib.blake2b(
                _EPOCH.pack(epoch), key=self._secret[:64], digest_size=32
            ).digest()
            self._keys[epoch] = key
        return key

    def _tag(self, epoch: int, addr: Address, ticket: bytes) -> bytes:
        mac = hashlib.blake2b(key=self._key(epoch), digest_size=_TAG_SIZE)
        mac.update(_EPOCH.pack(epoch))
        address = _address_bytes(addr)
        mac.update(len(address).to_bytes(2, "little"))
        mac.update(address)
        mac.update(ticket)
        return mac.digest()

    def issue(self, addr: Address, ticket: bytes, now: float) -> bytes:
        epoch = int(now // COOKIE_EPOCH) & 0xFFFFFFFF
        return _EPOCH.pack(epoch) + self._tag(epoch, addr, ticket)

    def check(self, cookie: bytes, addr: Address, ticket: bytes, now: float) -> bool:
        if len(cookie) != COOKIE_SIZE:
            return False
        (epoch,) = _EPOCH.unpack_from(cookie)
        current = int(now // COOKIE_EPOCH) & 0xFFFFFFFF
        if epoch not in (current, (current - 1) & 0xFFFFFFFF):
            return False
        return hmac.compare_digest(cookie[_EPOCH.size :], self._tag(epoch, addr, ticket))
