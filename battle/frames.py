"""Frames: the unit the room broadcasts, ordered by (frame, slot, input sequence)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FrameInput:
    """One player input as it lands in a frame."""

    slot: int
    seq: int
    """Per-player input sequence, from 1, assigned by the client."""
    data: bytes


@dataclass(frozen=True, slots=True)
class Frame:
    number: int
    """Frames are numbered from 1; frame 0 means 'no frame yet'."""
    inputs: tuple[FrameInput, ...] = ()
