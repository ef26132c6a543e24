"""Garbage collector settings for long-running server processes (room hosts, lobby nodes).

Both keep many long-lived objects (sessions, peers, buffered frames) and allocate briskly on
the hot path. With CPython's default thresholds the collector keeps rescanning the long-lived
heap and frees nothing; its full passes show up as tick-lateness and heartbeat spikes of
hundreds of milliseconds. Objects made while starting are frozen out of collection, and the
rest is collected rarely: reference counting frees almost everything anyway.
"""

from __future__ import annotations

import gc

THRESHOLDS = (100_000, 50, 100)


def tune_gc() -> None:
    """Call once, after start-up imports and before serving."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
