"""What the length-prefixed msgpack codecs share: frame reassembly and field checks.

Both TCP protocols (the control channel in control.py, the lobby's client protocol in
lobby/protocol.py) are streams of 4-byte big-endian lengths followed by a msgpack map. Each
codec keeps its own messages and error types; the mechanics live here once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgpack

HEADER = 4
"""Bytes of the big-endian length prefix."""


class FieldError(Exception):
    """A field value the codec refuses; the codec turns it into its own protocol error."""


Check = Callable[[object], Any]
"""Validates one decoded field and returns the value to store, or raises FieldError."""


def show(v: object) -> str:
    """A short description of an offending value for error messages."""
    text = repr(v)
    return f"{type(v).__name__} {text[:40]}{'…' if len(text) > 40 else ''}"


def uint(limit: int, low: int = 0) -> Check:
    def check(v: object) -> int:
        if type(v) is not int or not low <= v <= limit:
            raise FieldError(f"expected an integer in [{low}, {limit}], got {show(v)}")
        return v

    return check


def text(max_len: int, min_len: int = 0) -> Check:
    def check(v: object) -> str:
        if type(v) is not str or not min_len <= len(v) <= max_len:
            raise FieldError(f"expected a string of {min_len}..{max_len} chars, got {show(v)}")
        return v

    return check


def blob(max_len: int, min_len: int) -> Check:
    def check(v: object) -> bytes:
        if type(v) is not bytes or not min_len <= len(v) <= max_len:
            raise FieldError(f"expected {min_len}..{max_len} bytes, got {show(v)}")
        return v

    return check


def flag(v: object) -> bool:
    if type(v) is not bool:
        raise FieldError(f"expected a boolean, got {show(v)}")
    return v


def optional(inner: Check) -> Check:
    def check(v: object) -> Any:
        return None if v is None else inner(v)

    return check


def str_map(v: object) -> dict[str, object]:
    if type(v) is not dict or not all(type(k) is str for k in v):
        raise FieldError(f"expected a map with string keys, got {show(v)}")
    return v


class FrameBuffer:
    """Stream bytes in, whole frame bodies out; the caller judges the length prefix."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def append(self, data: bytes) -> None:
        self._buf += data

    def clear(self) -> None:
        self._buf = bytearray()

    def discard(self, n: int) -> int:
        """Drop up to ``n`` buffered bytes from the front; returns how many were dropped."""
        dropped = min(n, len(self._buf))
        del self._buf[:dropped]
        return dropped

    def pending_length(self) -> int | None:
        """The next frame's declared length, once its prefix has arrived."""
        if len(self._buf) < HEADER:
            return None
        return int.from_bytes(self._buf[:HEADER], "big")

    def pop(self) -> bytes | None:
        """The next frame's body once it is complete (call after checking the length)."""
        n = self.pending_length()
        if n is None or len(self._buf) < HEADER + n:
            return None
        body = bytes(self._buf[HEADER : HEADER + n])
        del self._buf[: HEADER + n]
        return body


def unpack_body(body: bytes) -> object:
    """Decode a frame body; raises FieldError naming msgpack's complaint for garbage."""
    try:
        return msgpack.unpackb(body, raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:  # msgpack raises many types on garbage; all mean one thing
        raise FieldError(type(exc).__name__) from None


def frame(body: bytes) -> bytes:
    return len(body).to_bytes(HEADER, "big") + body
