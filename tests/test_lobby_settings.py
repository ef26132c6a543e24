"""Lobby settings from TOML: every section lands where it should; mistakes are named."""

from __future__ import annotations

from pathlib import Path

import pytest

from lobby.matchmaker import Mode, WideningCurve
from lobby.settings import ConfigError, ListenSettings, LobbySettings, load_config

FULL = """
[listen]
host = "0.0.0.0"
client_port = 9000
control_port = 9001
control_host = "10.0.0.5"
data_dir = "/var/lib/framesync/lobby"

[lobby]
server_name = "eu-lobby"
lobby_id = "eu-1"
regions = ["eu", "na"]
heartbeat_interval = 2.0
idle_timeout = 9.0
max_frame = 4096
rate = 10.0
burst = 15
session_lifetime = 3600.0
ticket_lifetime = 60.0

[matchmaker]
interval = 0.5
ready_timeout = 12.0
decline_cooldown = 60.0
allocation_wait = 10.0
spread_initial = 2.0
spread_per_second = 1.0
spread_cap = 30.0

[[modes]]
name = "2v2"
team_size = 2

[[modes]]
name = "ffa4"
team_size = 1
teams = 4

[hosts]
heartbeat_interval = 0.5
lease = 3.0
create_timeout = 2.0
create_attempts = 5

[room]
tick_rate = 20
disconnect_timeout = 8.0
"""


def test_every_section_is_read(tmp_path: Path) -> None:
    path = tmp_path / "lobby.toml"
    path.write_text(FULL)
    settings, listen = load_config(path)
    assert listen == ListenSettings(
        host="0.0.0.0",
        client_port=9000,
        control_port=9001,
        control_host="10.0.0.5",
        data_dir=Path("/var/lib/framesync/lobby"),
    )
    assert settings.server_name == "eu-lobby" and settings.regions == ("eu", "na")
    assert (settings.heartbeat_interval, settings.idle_timeout) == (2.0, 9.0)
    assert (settings.max_frame, settings.rate, settings.burst) == (4096, 10.0, 15)
    assert (settings.match_interval, settings.ready_timeout) == (0.5, 12.0)
    assert (settings.decline_cooldown, settings.allocation_wait) == (60.0, 10.0)
    assert settings.widening == WideningCurve(2.0, 1.0, 30.0)
    assert settings.modes == (Mode("2v2", 2), Mode("ffa4", 1, 4))
    assert (settings.host_heartbeat_interval, settings.host_lease) == (0.5, 3.0)
    assert (settings.create_timeout, settings.create_attempts) == (2.0, 5)
    assert settings.room.tick_rate == 20 and settings.room.disconnect_timeout == 8.0


def test_empty_file_gives_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "empty.toml"
    path.write_text("")
    assert load_config(path) == (LobbySettings(), ListenSettings())


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[lobby]\nidle_timout = 5\n", "idle_timout"),
        ("[lobbby]\n", "lobbby"),
        ("[lobby]\nidle_timeout = -1\n", "idle_timeout"),
        ("[lobby]\nheartbeat_interval = 40.0\n", "heartbeat_interval"),
        ('[lobby]\nregions = "eu"\n', "regions"),
        ("[matchmaker]\nspread_initial = 50.0\n", "initial"),
        ("[hosts]\nlease = 0.5\nheartbeat_interval = 1.0\n", "lease"),
        ("[room]\ntick_rate = 500\n", "tick_rate"),
        ("[room]\nbogus = 1\n", "bogus"),
        ('[[modes]]\nname = "x"\nteam_size = 0\n', "team_size"),
        ('[[modes]]\nname = "x"\nteam_size = 200\n', "255"),
        ("[listen]\nclient_port = 70000\n", "client_port"),
        ('[listen]\ntls_cert = "c.pem"\n', "tls_key"),
        ("lobby = 3\n", "[lobby]"),
        ("[lobby\n", "lobby.toml"),
    ],
)
def test_mistakes_are_refused_by_name(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "lobby.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert needle in str(info.value) and str(path) in str(info.value)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml"):
        load_config(tmp_path / "nope.toml")
