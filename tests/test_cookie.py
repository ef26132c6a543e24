"""Challenge cookies: bound to address, ticket and secret; valid this epoch and the previous."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from battle.cookie import COOKIE_EPOCH, CookieJar
from battle.wire import COOKIE_SIZE, TICKET_SIZE

SECRET = bytes(range(32))
TICKET = bytes(range(TICKET_SIZE))
ADDR = ("192.0.2.10", 40000)
NOW = 1_000_000.0  # an epoch boundary: int(NOW // COOKIE_EPOCH) * COOKIE_EPOCH == NOW


def test_epoch_constant_is_sane() -> None:
    assert COOKIE_EPOCH > 0
    assert NOW % COOKIE_EPOCH == 0


def test_round_trip() -> None:
    jar = CookieJar(SECRET)
    cookie = jar.issue(ADDR, TICKET, NOW)
    assert len(cookie) == COOKIE_SIZE
    assert jar.check(cookie, ADDR, TICKET, NOW)
    # A second jar with the same secret (another process, or after a restart) agrees.
    assert CookieJar(SECRET).check(cookie, ADDR, TICKET, NOW + 1.0)


def test_issue_is_deterministic_within_an_epoch() -> None:
    jar = CookieJar(SECRET)
    assert jar.issue(ADDR, TICKET, NOW) == jar.issue(ADDR, TICKET, NOW + COOKIE_EPOCH - 0.001)
    assert jar.issue(ADDR, TICKET, NOW) != jar.issue(ADDR, TICKET, NOW + COOKIE_EPOCH)


@settings(max_examples=200)
@given(
    st.text(min_size=1, max_size=45),
    st.integers(min_value=0, max_value=65535),
    st.binary(max_size=TICKET_SIZE),
    st.floats(min_value=0, max_value=2e9, allow_nan=False),
)
def test_round_trip_property(host: str, port: int, ticket: bytes, now: float) -> None:
    jar = CookieJar(SECRET)
    cookie = jar.issue((host, port), ticket, now)
    assert len(cookie) == COOKIE_SIZE
    assert jar.check(cookie, (host, port), ticket, now)
    assert not jar.check(cookie, (host, port + 1), ticket, now)


@pytest.mark.parametrize(
    "addr",
    [
        ("192.0.2.11", 40000),  # other host
        ("192.0.2.10", 40001),  # other port
        ("192.0.2.1", 40000),
        ("::ffff:192.0.2.10", 40000),
        ("192.0.2.10", 4000),
    ],
)
def test_bound_to_address(addr: tuple[str, int]) -> None:
    jar = CookieJar(SECRET)
    cookie = jar.issue(ADDR, TICKET, NOW)
    assert not jar.check(cookie, addr, TICKET, NOW)
    assert jar.check(cookie, ADDR, TICKET, NOW)


def test_bound_to_ticket() -> None:
    jar = CookieJar(SECRET)
    cookie = jar.issue(ADDR, TICKET, NOW)
    for i in (0, 17, TICKET_SIZE - 1):
        other = bytearray(TICKET)
        other[i] ^= 1
        assert not jar.check(cookie, ADDR, bytes(other), NOW)
    assert not jar.check(cookie, ADDR, TICKET[:-1], NOW)
    assert not jar.check(cookie, ADDR, b"", NOW)


def test_bound_to_secret() -> None:
    cookie = CookieJar(SECRET).issue(ADDR, TICKET, NOW)
    assert not CookieJar(bytes(32)).check(cookie, ADDR, TICKET, NOW)
    assert not CookieJar(SECRET[:-1] + b"\xff").check(cookie, ADDR, TICKET, NOW)
    assert not CookieJar(SECRET + b"x").check(cookie, ADDR, TICKET, NOW)


def test_secret_must_be_at_least_16_bytes() -> None:
    with pytest.raises(ValueError):
        CookieJar(bytes(15))
    with pytest.raises(ValueError):
        CookieJar(b"")
    CookieJar(bytes(16))


def test_long_secret_still_works() -> None:
    jar = CookieJar(bytes(range(100)))
    cookie = jar.issue(ADDR, TICKET, NOW)
    assert jar.check(cookie, ADDR, TICKET, NOW)


@pytest.mark.parametrize(
    ("issued", "checked", "valid"),
    [
        (NOW, NOW, True),
        (NOW, NOW + COOKIE_EPOCH - 0.001, True),  # same epoch
        (NOW + COOKIE_EPOCH - 0.001, NOW + COOKIE_EPOCH, True),  # previous epoch, just
        (NOW, NOW + COOKIE_EPOCH, True),  # previous epoch
        (NOW, NOW + 2 * COOKIE_EPOCH - 0.001, True),  # previous epoch, last instant
        (NOW, NOW + 2 * COOKIE_EPOCH, False),  # two epochs later
        (NOW + COOKIE_EPOCH - 0.001, NOW + 2 * COOKIE_EPOCH, False),
        (NOW, NOW + 100 * COOKIE_EPOCH, False),
        (NOW, NOW - 0.001, False),  # from the future
        (NOW + COOKIE_EPOCH, NOW, False),  # from the next epoch
        (NOW + 5 * COOKIE_EPOCH, NOW, False),
    ],
)
def test_epoch_validity(issued: float, checked: float, valid: bool) -> None:
    jar = CookieJar(SECRET)
    cookie = jar.issue(ADDR, TICKET, issued)
    assert jar.check(cookie, ADDR, TICKET, checked) is valid


def test_epoch_counter_wraps() -> None:
    jar = CookieJar(SECRET)
    last = (2**32 - 1) * COOKIE_EPOCH + 1.0  # epoch 0xFFFFFFFF
    cookie = jar.issue(ADDR, TICKET, last)
    assert cookie[:4] == b"\xff\xff\xff\xff"
    assert jar.check(cookie, ADDR, TICKET, last + COOKIE_EPOCH)  # current epoch wraps to 0
    assert not jar.check(cookie, ADDR, TICKET, last + 2 * COOKIE_EPOCH)


def test_many_epochs_do_not_break_the_key_cache() -> None:
    jar = CookieJar(SECRET)
    cookies = [jar.issue(ADDR, TICKET, NOW + i * COOKIE_EPOCH) for i in range(12)]
    assert len(set(cookies)) == 12
    for i, cookie in enumerate(cookies):
        assert jar.check(cookie, ADDR, TICKET, NOW + i * COOKIE_EPOCH)
        assert jar.check(cookie, ADDR, TICKET, NOW + (i + 1) * COOKIE_EPOCH)
        assert not jar.check(cookie, ADDR, TICKET, NOW + (i + 2) * COOKIE_EPOCH)


def test_epoch_field_cannot_be_rewritten() -> None:
    jar = CookieJar(SECRET)
    cookie = jar.issue(ADDR, TICKET, NOW)
    epoch = int(NOW // COOKIE_EPOCH)
    moved = (epoch + 1).to_bytes(4, "little") + cookie[4:]
    assert not jar.check(moved, ADDR, TICKET, NOW + COOKIE_EPOCH)


@pytest.mark.parametrize("size", [0, 4, COOKIE_SIZE - 1, COOKIE_SIZE + 1, 64])
def test_wrong_length(size: int) -> None:
    jar = CookieJar(SECRET)
    cookie = jar.issue(ADDR, TICKET, NOW)
    assert not jar.check((cookie * 4)[:size], ADDR, TICKET, NOW)


def test_every_bit_flip_fails() -> None:
    jar = CookieJar(SECRET)
    cookie = jar.issue(ADDR, TICKET, NOW)
    for bit in range(COOKIE_SIZE * 8):
        flipped = bytearray(cookie)
        flipped[bit // 8] ^= 1 << (bit % 8)
        assert not jar.check(bytes(flipped), ADDR, TICKET, NOW), bit


@settings(max_examples=200)
@given(st.binary(min_size=COOKIE_SIZE, max_size=COOKIE_SIZE))
def test_random_cookies_fail(cookie: bytes) -> None:
    jar = CookieJar(SECRET)
    assert not jar.check(cookie, ADDR, TICKET, NOW)
