"""`framesync bench loss`: a tiny run's counts are sane (no wall-clock thresholds)."""

from __future__ import annotations

import json

import pytest

from sim.bench_loss import LossCase, default_cases, kcp_available, run_loss_bench
from sim.cli import main


def test_default_grid_is_three_rtts_by_five_losses_plus_a_burst_case() -> None:
    cases = default_cases()
    assert len(cases) == 16
    assert {c.rtt_ms for c in cases} == {30, 50, 70}
    assert [c for c in cases if c.burst] == [LossCase(50, 5, burst=3.0)]
    assert cases[-1].profile().expected_loss == pytest.approx(0.05)


def test_small_run_echoes_every_input_and_counts_bytes() -> None:
    report = run_loss_bench(
        seconds=4.0, seeds=1, players=4, cases=[LossCase(50, 10)], with_kcp=False
    )
    assert not report.kcp
    (cell,) = report.cells
    fs = cell.framesync
    assert cell.kcp is None and cell.beats_kcp is None
    assert fs.inputs_sent > 20  # 4 players × 4 s × 15 Hz × 0.5
    assert fs.samples == fs.inputs_sent  # every input came back in a frame, once
    assert report.all_echoed
    assert 0 < fs.avg_ms <= fs.p99_ms <= fs.max_ms
    assert 0 <= fs.over_300 <= fs.samples
    assert fs.bytes_per_player_s > 28 * fs.datagrams_per_player_s > 0
    assert "KCP skipped" in report.render()
    plain = report.as_dict()
    assert plain["all_echoed"] is True
    json.dumps(plain)


def test_same_seed_same_report() -> None:
    def run() -> dict[str, object]:
        return run_loss_bench(
            seconds=2.0, seeds=1, players=2, cases=[LossCase(30, 5)], with_kcp=False
        ).as_dict()

    assert run() == run()


@pytest.mark.skipif(not kcp_available(), reason="the optional kcp package is not installed")
def test_small_run_over_kcp_echoes_every_input() -> None:
    report = run_loss_bench(seconds=4.0, seeds=1, players=4, cases=[LossCase(50, 10)])
    (cell,) = report.cells
    assert report.kcp and cell.kcp is not None
    assert cell.kcp.samples == cell.kcp.inputs_sent > 20
    assert cell.kcp.bytes_per_player_s > 0
    assert report.all_echoed


def test_cli_rejects_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "loss", "--seconds", "0.5", "--no-kcp"]) == 2
    assert "seconds" in capsys.readouterr().err
