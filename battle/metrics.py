"""Prometheus metrics for a room host, read from the core's counters at scrape time.

Nothing is updated on the hot path: the collector reads the counters the core keeps anyway,
so metrics cost nothing between scrapes. `prometheus-client` is an optional extra.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

LATENESS_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)


class LatenessHistogram:
    """Tick lateness (seconds after the deadline the tick actually ran), cheap to observe."""

    __slots__ = ("count", "counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENESS_BUCKETS) + 1)
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(LATENESS_BUCKETS, value)] += 1
        self.count += 1
        self.sum += value

    def quantile(self, q: float) -> float:
        """Upper bucket bound holding the q-quantile (coarse, for summaries)."""
        if not self.count:
            return 0.0
        target = q * self.count
        seen = 0
        for i, n in enumerate(self.counts):
            seen += n
            if seen >= target:
                return LATENESS_BUCKETS[i] if i < len(LATENESS_BUCKETS) else float("inf")
        return float("inf")


def start_metrics_server(
    port: int,
    snapshot: Callable[[], tuple[Counter[str], Counter[str], dict[str, float]]],
    lateness: LatenessHistogram,
) -> None:
    """Serve /metrics on `port` from a background thread (prometheus-client's own server)."""
    try:
        from prometheus_client import start_http_server  # noqa: PLC0415
        from prometheus_client.core import (  # noqa: PLC0415
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )
        from prometheus_client.registry import REGISTRY  # noqa: PLC0415
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError("metrics need the extra: pip install 'framesync[metrics]'") from exc

    class HostCollector:
        def collect(self) -> Iterator[Any]:
            stats, drops, gauges = snapshot()
            for name in ("datagrams_in", "datagrams_out", "bytes_in", "bytes_out"):
                family = CounterMetricFamily(f"framesync_{name}", name.replace("_", " "))
                family.add_metric([], stats[name])
                yield family
            dropped = CounterMetricFamily(
                "framesync_drops", "datagrams and inputs dropped, by reason", labels=["reason"]
            )
            for reason, count in sorted(drops.items()):
                dropped.add_metric([reason], count)
            yield dropped
            desyncs = CounterMetricFamily("framesync_desyncs", "desyncs detected")
            desyncs.add_metric([], stats["desyncs"])
            yield desyncs
            for name, value in sorted(gauges.items()):
                gauge = GaugeMetricFamily(f"framesync_{name}", name.replace("_", " "))
                gauge.add_metric([], value)
                yield gauge
            buckets: list[tuple[str, float]] = []
            total = 0
            for bound, count in zip(
                (*map(str, LATENESS_BUCKETS), "+Inf"), lateness.counts, strict=True
            ):
                total += count
                buckets.append((bound, total))
            hist = HistogramMetricFamily(
                "framesync_tick_lateness_seconds", "how late room ticks ran after their deadline"
            )
            hist.add_metric([], buckets, lateness.sum)
            yield hist

    REGISTRY.register(HostCollector())
    start_http_server(port)
