"""`framesync bench lobby`: a tiny run against a real lobby process counts everything right.

No wall-clock thresholds: only what every session and ticket went through.
"""

from __future__ import annotations

import json

import pytest

from sim.bench_lobby import run_lobby_bench


def test_a_small_run_logs_in_holds_and_matches_everyone() -> None:
    report = run_lobby_bench(sessions=40, tickets=20, hold=1.0)

    assert report.sessions_logged_in == 40
    assert report.sessions_held == 40
    assert report.disconnects == 0
    assert report.kicks == 0
    assert report.heartbeat_acks == report.heartbeats_sent
    assert report.tickets_queued == 20
    assert report.tickets_proposed == 20
    assert report.tickets_ready == 20
    assert report.matches_cancelled == 0
    assert report.rooms_created == 2
    assert report.host_reconnects == 0
    assert report.errors == {}
    assert report.lobby_log == {}
    assert report.lobby_exit_code == 0
    # Too small to judge either goal, and it says so rather than "NOT met".
    assert report.sessions_goal.startswith("not tested")
    assert report.matching_goal.startswith("not tested")
    assert json.loads(json.dumps(report.as_dict()))["tickets_ready"] == 20
    assert "goal 10,000 held" in report.render()


@pytest.mark.parametrize(
    ("sessions", "tickets"),
    [(10, 15), (10, 20), (0, 0), (20, 0)],
)
def test_impossible_sizes_are_refused_before_anything_starts(sessions: int, tickets: int) -> None:
    with pytest.raises(ValueError, match="multiple of 10"):
        run_lobby_bench(sessions=sessions, tickets=tickets, hold=0.0)
