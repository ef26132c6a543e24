"""Reference game: determinism, snapshots, PRNG use, rules, input decoding, bots."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from battle.config import RosterEntry
from battle.frames import Frame, FrameInput
from sim.fixedpoint import clamp, dist, dist_sq, div_trunc, isqrt, mul_div, step_toward, within
from sim.game import (
    ATTACK_COOLDOWN,
    ATTACK_DAMAGE,
    BOLT,
    CRIT_CHANCE,
    CRIT_MULTIPLIER,
    HEAL,
    HEAL_AMOUNT,
    HEAL_COOLDOWN,
    MAP_SIZE,
    MAX_COMMAND_BYTES,
    MAX_HP,
    MISSING,
    ORDER_IDLE,
    RESPAWN_FRAMES,
    Attack,
    Cast,
    Command,
    FieldDiff,
    Game,
    Move,
    decode_command,
    diff_dumps,
    encode_command,
)
from sim.gamebot import BotBrain
from sim.prng import Pcg32

Script = dict[int, list[tuple[int, Command | bytes]]]
"""frame number -> inputs (slot, command or raw bytes), in the order they are sent."""


def roster(n: int, teams: int = 2) -> list[RosterEntry]:
    return [RosterEntry(slot, 1000 + slot, slot % teams) for slot in range(n)]


def make_frame(
    number: int, items: Sequence[tuple[int, Command | bytes]], seqs: dict[int, int]
) -> Frame:
    inputs = []
    for slot, item in items:
        seqs[slot] = seqs.get(slot, 0) + 1
        data = item if isinstance(item, bytes) else encode_command(item)
        inputs.append(FrameInput(slot, seqs[slot], data))
    inputs.sort(key=lambda i: (i.slot, i.seq))
    return Frame(number, tuple(inputs))


def script_frames(script: Script, count: int) -> list[Frame]:
    seqs: dict[int, int] = {}
    return [make_frame(n, script.get(n, []), seqs) for n in range(1, count + 1)]


def run(game: Game, frames: Sequence[Frame]) -> list[int]:
    hashes = []
    for frame in frames:
        game.step(frame)
        hashes.append(game.state_hash())
    return hashes


def bot_frames(game: Game, brains: Sequence[BotBrain], count: int) -> list[Frame]:
    """Let the bots play `count` frames on `game`; returns the frames as a room would send them."""
    seqs: dict[int, int] = {}
    frames = []
    for _ in range(count):
        if game.finished:
            break
        items: list[tuple[int, Command | bytes]] = []
        for brain in brains:
            cmd = brain.decide(game)
            if cmd is not None:
                items.append((brain.slot, cmd))
        frame = make_frame(game.frame + 1, items, seqs)
        game.step(frame)
        frames.append(frame)
    return frames


def duel_script() -> Script:
    """Slot 0 (team 0) and slot 1 (team 1) meet mid-map; slot 0 attacks from frame 200."""
    return {
        1: [(0, Move(4000, 4000)), (1, Move(4300, 4000))],
        200: [(0, Attack(1))],
    }


# --- fixed-point helpers ----------------------------------------------------------------


def test_div_trunc_rounds_toward_zero_like_c() -> None:
    assert [div_trunc(a, b) for a, b in [(7, 2), (-7, 2), (7, -2), (-7, -2), (0, 5)]] == [
        3,
        -3,
        -3,
        3,
        0,
    ]
    assert mul_div(-250, 3, 4) == -187
    with pytest.raises(ZeroDivisionError):
        div_trunc(1, 0)


def test_small_helpers() -> None:
    assert clamp(-5, 0, 10) == 0
    assert clamp(15, 0, 10) == 10
    assert clamp(5, 0, 10) == 5
    assert dist(0, 0, 3, 4) == 5
    assert dist_sq(1, 1, 4, 5) == 25
    assert within(0, 0, 3, 4, 5)
    assert not within(0, 0, 3, 4, 4)
    with pytest.raises(ValueError):
        isqrt(-1)


@given(st.integers(min_value=0, max_value=1 << 80))
def test_isqrt_is_the_exact_floor(n: int) -> None:
    r = isqrt(n)
    assert r * r <= n < (r + 1) * (r + 1)


coords = st.integers(min_value=0, max_value=MAP_SIZE)


@given(coords, coords, coords, coords, st.integers(min_value=2, max_value=300))
def test_step_toward_never_overshoots_and_arrives(
    x: int, y: int, tx: int, ty: int, step: int
) -> None:
    for _ in range(2 * MAP_SIZE):
        before = dist_sq(x, y, tx, ty)
        nx, ny = step_toward(x, y, tx, ty, step)
        assert dist_sq(x, y, nx, ny) <= step * step
        assert dist_sq(nx, ny, tx, ty) < before or (nx, ny) == (tx, ty)
        x, y = nx, ny
        if (x, y) == (tx, ty):
            break
    assert (x, y) == (tx, ty)


# --- commands ---------------------------------------------------------------------------

commands = st.one_of(
    st.builds(Move, coords, coords),
    st.builds(Attack, st.integers(min_value=0, max_value=255)),
    st.builds(Cast, st.sampled_from([BOLT, HEAL]), st.integers(min_value=0, max_value=255)),
)


@given(commands)
def test_commands_round_trip_and_fit_the_input_limit(cmd: Command) -> None:
    data = encode_command(cmd)
    assert len(data) <= MAX_COMMAND_BYTES
    assert decode_command(data) == cmd


@given(st.binary(max_size=40))
def test_decode_never_raises_and_is_canonical(data: bytes) -> None:
    cmd = decode_command(data)
    if cmd is not None:
        assert encode_command(cmd) == data


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00",
        b"\x01\x00\x00\x00",  # short move
        b"\x01\x00\x00\x00\x00\x00",  # long move
        b"\x01\x41\x1f\x00\x00",  # x = 8001, off the map
        b"\x02",
        b"\x02\x01\x00",
        b"\x03\x02\x01",  # no skill 2
        b"\x09\x00\x00",
        bytes(33),
    ],
)
def test_malformed_commands_decode_to_none(data: bytes) -> None:
    assert decode_command(data) is None


@pytest.mark.parametrize("cmd", [Move(-1, 0), Move(0, MAP_SIZE + 1), Attack(256), Cast(2, 0)])
def test_encode_refuses_what_no_decoder_accepts(cmd: Command) -> None:
    with pytest.raises(ValueError):
        encode_command(cmd)


def test_documented_encodings() -> None:
    assert encode_command(Move(4000, 258)) == b"\x01\xa0\x0f\x02\x01"
    assert encode_command(Attack(7)) == b"\x02\x07"
    assert encode_command(Cast(HEAL, 3)) == b"\x03\x01\x03"


# --- construction and stepping ----------------------------------------------------------


@pytest.mark.parametrize(
    ("seed", "entries", "kwargs"),
    [
        (-1, roster(2), {}),
        (1 << 64, roster(2), {}),
        (1, [], {}),
        (1, [RosterEntry(0, 1, 0), RosterEntry(0, 2, 1)], {}),
        (1, [RosterEntry(0, 1, 4)], {}),
        (1, [RosterEntry(256, 1, 0)], {}),
        (1, roster(2), {"kills_to_win": 0}),
        (1, roster(2), {"max_frames": -1}),
    ],
)
def test_bad_construction_is_refused(
    seed: int, entries: list[RosterEntry], kwargs: dict[str, int]
) -> None:
    with pytest.raises(ValueError):
        Game(seed, entries, **kwargs)


def test_frames_must_come_in_order() -> None:
    game = Game(1, roster(2))
    with pytest.raises(ValueError):
        game.step(Frame(2))
    game.step(Frame(1))
    with pytest.raises(ValueError):
        game.step(Frame(1))
    assert game.frame == 1


def test_same_frames_give_the_same_hash_every_frame() -> None:
    a = Game(42, roster(10))
    frames = bot_frames(a, [BotBrain(s, s) for s in range(10)], 600)
    b = Game(42, roster(10))
    c = Game(42, roster(10))
    assert run(b, frames) == run(c, frames)
    assert b.encode_state() == a.encode_state()


def test_another_seed_changes_the_hash() -> None:
    frames = script_frames(duel_script(), 300)
    a, b = Game(1, roster(2)), Game(2, roster(2))
    assert a.state_hash() != b.state_hash()
    assert all(x != y for x, y in zip(run(a, frames), run(b, frames), strict=True))


def test_one_changed_input_changes_the_hash_from_that_frame_on() -> None:
    script = duel_script()
    changed: Script = {**script, 50: [(0, Move(1000, 5000))]}
    script[50] = [(0, Move(1001, 5000))]
    a = run(Game(7, roster(2)), script_frames(script, 400))
    b = run(Game(7, roster(2)), script_frames(changed, 400))
    assert a[:49] == b[:49]
    assert all(x != y for x, y in zip(a[49:], b[49:], strict=True))


def test_snapshot_round_trip_mid_match_continues_identically() -> None:
    game = Game(99, roster(10), kills_to_win=1000)
    brains = [BotBrain(s, 500 + s) for s in range(10)]
    bot_frames(game, brains, 700)
    assert sum(h.deaths for h in game.heroes) > 0, "want a snapshot with dead heroes and kills"
    data = game.encode_state()
    copy = Game.from_state(data)
    assert copy.encode_state() == data
    assert copy.dump() == game.dump()
    later = bot_frames(game, brains, 800)
    assert len(later) == 800
    expected = Game.from_state(data)
    assert run(copy, later) == run(expected, later)
    assert copy.encode_state() == game.encode_state()


HERO_BYTES = 49
"""Encoded size of one hero (docs/GAME.md); the damaged-state cases index into the last one."""


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d[:-1],
        lambda d: b"XXXX" + d[4:],
        lambda d: d + b"\x00",
        lambda d: d[: -HERO_BYTES + 9] + b"\x09" + d[-HERO_BYTES + 10 :],  # team 9
        lambda d: d[: -HERO_BYTES + 10] + b"\x05" + d[-HERO_BYTES + 11 :],  # alive flag 5
        lambda d: d[: -HERO_BYTES + 11] + b"\x00" * 4 + d[-HERO_BYTES + 15 :],  # alive, 0 hp
    ],
)
def test_from_state_refuses_damaged_states(mutate: Callable[[bytes], bytes]) -> None:
    game = Game(3, roster(4))
    run(game, script_frames(duel_script(), 10))
    data = game.encode_state()
    assert (len(data) - len(Game(3, roster(1)).encode_state())) // 3 == HERO_BYTES
    assert Game.from_state(data).encode_state() == data
    with pytest.raises(ValueError):
        Game.from_state(mutate(data))


# --- rules -------------------------------------------------------------------------------


def test_crits_follow_the_match_prng() -> None:
    seed = 2024
    game = Game(seed, roster(2))
    frames = script_frames(duel_script(), 199 + 8 * ATTACK_COOLDOWN)
    damage = []
    for frame in frames:
        before = game.hero(1).hp
        game.step(frame)
        if game.hero(1).hp != before:
            damage.append(before - game.hero(1).hp)
    reference = Pcg32.from_seed(seed)
    expected = [
        ATTACK_DAMAGE * (CRIT_MULTIPLIER if reference.chance(*CRIT_CHANCE) else 1) for _ in damage
    ]
    assert len(damage) == 8
    assert damage == expected
    assert CRIT_MULTIPLIER * ATTACK_DAMAGE in damage, "this seed should crit at least once"
    # Crits are the only draws: the match PRNG is exactly where the reference is.
    state, inc = reference.getstate()
    assert game.dump()["rng"] == {"state": state, "inc": inc}


def test_dead_heroes_respawn_at_base() -> None:
    script = duel_script()
    for n in range(200, 600, 90):
        script.setdefault(n, []).append((0, Cast(BOLT, 1)))
    game = Game(5, roster(2))
    victim, killer = game.hero(1), game.hero(0)
    spawn = (victim.x, victim.y)
    frames = script_frames(script, 800)
    it = iter(frames)
    for frame in it:
        game.step(frame)
        if not victim.alive:
            break
    assert not victim.alive
    died = game.frame
    assert (victim.hp, victim.respawn, victim.deaths) == (0, RESPAWN_FRAMES, 1)
    assert (killer.kills, game.team_kills[0], killer.order) == (1, 1, ORDER_IDLE)
    for frame in it:
        game.step(frame)
        if game.frame == died + RESPAWN_FRAMES - 1:
            assert not victim.alive
        if game.frame == died + RESPAWN_FRAMES:
            break
    assert game.hero(1).alive
    assert (victim.hp, (victim.x, victim.y), victim.respawn) == (MAX_HP, spawn, 0)


def test_heal_restores_an_ally_and_respects_its_cooldown() -> None:
    script = duel_script()
    script[1].append((2, Move(4000, 4100)))  # slot 2 is on team 0, next to slot 0
    script[200].append((1, Attack(0)))
    script[260] = [(2, Cast(HEAL, 0)), (2, Cast(BOLT, 0))]  # last cast wins: bolt on an ally
    script[261] = [(2, Cast(HEAL, 0))]
    script[262] = [(2, Cast(HEAL, 0))]
    game = Game(11, roster(3))
    frames = script_frames(script, 262)
    run(game, frames[:259])
    healer, patient = game.hero(2), game.hero(0)
    assert patient.hp < MAX_HP - HEAL_AMOUNT
    run(game, frames[259:260])
    assert (healer.heal_cd, healer.bolt_cd) == (0, 0)
    before = patient.hp
    run(game, frames[260:261])
    assert healer.heal_cd == HEAL_COOLDOWN
    assert patient.hp >= before + HEAL_AMOUNT - CRIT_MULTIPLIER * ATTACK_DAMAGE
    before = patient.hp
    run(game, frames[261:262])
    assert healer.heal_cd == HEAL_COOLDOWN - 1
    assert patient.hp <= before


def test_enemy_fountain_burns_and_gets_the_kill() -> None:
    game = Game(1, roster(2))
    run(game, script_frames({1: [(0, Move(7200, 7200))]}, 600))
    assert game.hero(0).deaths >= 1
    assert game.team_kills[1] >= 1
    assert game.hero(1).kills == 0


def test_frame_limit_without_kills_is_a_draw() -> None:
    game = Game(1, roster(4), max_frames=5)
    run(game, script_frames({}, 5))
    assert (game.finished, game.winner) == (True, None)
    before = game.dump()
    game.step(Frame(6, (FrameInput(0, 1, encode_command(Move(10, 10))),)))
    assert diff_dumps(before, game.dump()) == [FieldDiff("frame", 5, 6)]


def test_a_bot_match_ends_with_a_winner() -> None:
    game = Game(77, roster(10), kills_to_win=10, max_frames=18_000)
    bot_frames(game, [BotBrain(s, 77 * 100 + s) for s in range(10)], 18_000)
    assert game.finished
    assert game.winner is not None
    assert game.frame < 18_000
    assert game.team_kills[game.winner] == 10


def test_bots_only_read_the_game() -> None:
    game = Game(8, roster(10))
    bot_frames(game, [BotBrain(s, s) for s in range(10)], 300)
    before = game.encode_state()
    brains = [BotBrain(s, 1000 + s) for s in range(10)]
    for _ in range(20):
        for brain in brains:
            brain.decide(game)
    assert game.encode_state() == before


def test_malformed_inputs_are_ignored_and_counted() -> None:
    script = duel_script()
    noisy = {n: list(items) for n, items in script.items()}
    noisy[1] = [*noisy[1], (0, b"\xff\x00"), (1, b""), (9, encode_command(Move(1, 1)))]
    noisy[30] = [(1, bytes(40)), (0, b"\x03\x07\x01")]
    a = Game(4, roster(2))
    b = Game(4, roster(2))
    run(a, script_frames(script, 300))
    run(b, script_frames(noisy, 300))
    assert diff_dumps(a.dump(), b.dump()) == [FieldDiff("bad_inputs", 0, 5)]


inputs = st.lists(
    st.tuples(st.integers(min_value=0, max_value=12), st.binary(max_size=40)),
    max_size=6,
)


@given(st.lists(inputs, min_size=1, max_size=40))
def test_random_input_bytes_never_raise(frames: list[list[tuple[int, bytes]]]) -> None:
    game = Game(6, roster(8, teams=4))
    seqs: dict[int, int] = {}
    for number, items in enumerate(frames, start=1):
        game.step(make_frame(number, list(items), seqs))
        game.state_hash()
    assert Game.from_state(game.encode_state()).dump() == game.dump()


def test_perturb_makes_a_lasting_pinpointable_desync() -> None:
    frames = script_frames(duel_script(), 400)
    a, b = Game(9, roster(2)), Game(9, roster(2))
    run(a, frames[:100])
    run(b, frames[:100])
    b.perturb(1)
    assert all(x != y for x, y in zip(run(a, frames[100:]), run(b, frames[100:]), strict=True))
    assert [d.path for d in diff_dumps(a.dump(), b.dump())] == ["heroes[1].deaths"]


# --- diffing ------------------------------------------------------------------------------


def test_diff_dumps_pinpoints_a_field() -> None:
    game = Game(1, roster(6))
    run(game, script_frames(duel_script(), 20))
    a = game.dump()
    b = game.dump()
    heroes = b["heroes"]
    assert isinstance(heroes, list)
    heroes[3]["hp"] = 1
    assert diff_dumps(a, b) == [FieldDiff("heroes[3].hp", MAX_HP, 1)]
    assert diff_dumps(a, a) == []


def test_diff_dumps_reports_real_divergence_by_path() -> None:
    a, b = Game(1, roster(4)), Game(1, roster(4))
    run(a, script_frames({1: [(3, Move(3000, 3000))]}, 10))
    run(b, script_frames({1: [(3, Move(5000, 3000))]}, 10))
    paths = [d.path for d in diff_dumps(a.dump(), b.dump())]
    assert paths == sorted(paths)
    assert {"heroes[3].order_x", "heroes[3].x", "heroes[3].y"} <= set(paths)
    assert all(p.startswith("heroes[3].") for p in paths)


def test_diff_dumps_shape_changes() -> None:
    diffs = diff_dumps({"xs": [1, 2], "k": True}, {"xs": [1], "k": 1, "new": "v"})
    assert diffs == [
        FieldDiff("k", True, 1),
        FieldDiff("new", MISSING, "v"),
        FieldDiff("xs[1]", 2, MISSING),
    ]


# --- golden --------------------------------------------------------------------------------

# Final state_hash of the golden script below. Any change to the rules, to the order of
# PRNG draws or to the state encoding changes it. Changing the rules means updating this
# value on purpose (and docs/GAME.md with it); never update it to make an accidental
# change pass.
GOLDEN_HASH = 0x9117_BFBA_5BFF_5BC1


def golden_script() -> Script:
    return {
        1: [
            (0, Move(4000, 4000)),
            (1, Move(4200, 4100)),
            (2, Move(3900, 4200)),
            (3, Move(4300, 3800)),
        ],
        5: [(2, b"\x01\xff")],  # malformed: ignored and counted
        180: [(0, Attack(1)), (1, Attack(0)), (2, Attack(3)), (3, Attack(2))],
        190: [(0, Cast(BOLT, 3)), (3, Cast(BOLT, 0))],
        260: [(1, Cast(HEAL, 1)), (2, Cast(HEAL, 0))],
        300: [(2, Move(800, 800))],
        320: [(3, Attack(0)), (1, Attack(0))],
        400: [(0, Cast(BOLT, 1)), (3, Cast(BOLT, 0))],
        500: [(2, Move(4000, 4000))],
        600: [(2, Attack(1)), (0, Attack(3))],
        810: [(1, Move(4000, 4000)), (3, Move(4100, 4000))],
        980: [(0, Attack(1)), (2, Attack(1)), (1, Cast(HEAL, 1))],
        985: [(0, Cast(BOLT, 1)), (2, Cast(BOLT, 3)), (3, Attack(2))],
    }


def test_golden_final_hash() -> None:
    game = Game(0xF5A1_2024, roster(4), kills_to_win=3)
    run(game, script_frames(golden_script(), 1100))
    # The script covers crits, bolts, heals, a fountain, respawns and a finished match.
    assert (game.finished, game.winner, game.team_kills, game.bad_inputs) == (
        True,
        0,
        [3, 1, 0, 0],
        1,
    )
    assert game.state_hash() == GOLDEN_HASH, hex(game.state_hash())
