"""Prometheus metrics for a lobby node, from a snapshot the event loop refreshes.

The scrape runs on prometheus-client's own thread, so it reads a copy made on the trio
thread (`LobbyServer.stats()`, every 0.25 s), never the live counters. Needs the `metrics` extra.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

GAUGES = (
    "clients",
    "players_online",
    "hosts_connected",
    "hosts_live",
    "queued_tickets",
    "matches_in_progress",
    "matchmaker",
    "store_writes_waiting",
)
"""Stats that are levels, not running totals (`matchmaker`: 1 on the node running it)."""


def start_lobby_metrics(port: int, snapshot: Callable[[], dict[str, Any]]) -> None:
    """Serve /metrics on `port`: gauges by name, every counter as framesync_lobby_events."""
    try:
        from prometheus_client import start_http_server  # noqa: PLC0415
        from prometheus_client.core import (  # noqa: PLC0415
            CounterMetricFamily,
            GaugeMetricFamily,
        )
        from prometheus_client.registry import REGISTRY  # noqa: PLC0415
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError("metrics need the extra: pip install 'framesync[metrics]'") from exc

    class LobbyCollector:
        def collect(self) -> Iterator[Any]:
            stats = snapshot()
            for name in GAUGES:
                gauge = GaugeMetricFamily(f"framesync_lobby_{name}", name.replace("_", " "))
                gauge.add_metric([], float(stats.get(name, 0)))
                yield gauge
            events = CounterMetricFamily(
                "framesync_lobby_events", "lobby events by kind", labels=["event"]
            )
            for name, value in sorted(stats.items()):
                if name not in GAUGES:
                    events.add_metric([name], float(value))
            yield events

    REGISTRY.register(LobbyCollector())
    start_http_server(port)
