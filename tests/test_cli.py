"""The `framesync` command as users run it: a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys

from battle import __version__


def _framesync(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sim.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_version() -> None:
    result = _framesync("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"framesync {__version__}"


def test_help_lists_subcommands() -> None:
    result = _framesync("--help")
    assert result.returncode == 0
    assert "demo" in result.stdout


def test_no_command_prints_help_and_fails() -> None:
    result = _framesync()
    assert result.returncode == 2
    assert "usage:" in result.stdout


def test_demo_json_reports_an_exact_match() -> None:
    result = _framesync(
        "demo", "--virtual", "--seconds", "8", "--players", "4", "--loss", "10", "--json"
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["ok"] is True
    assert summary["clients_identical"] == 4
    assert summary["inputs_landed"] == summary["inputs_sent"] > 0
    assert summary["log_frames"] == summary["frames"] >= 8 * 15 - 2


def test_demo_rejects_bad_arguments() -> None:
    result = _framesync("demo", "--virtual", "--players", "0")
    assert result.returncode == 2
    assert "invalid choice" in result.stderr
