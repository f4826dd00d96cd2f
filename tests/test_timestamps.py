"""csms.timestamps: lenient parsing of charger times (field case Q06) and UTC formatting."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from csms.timestamps import ParsedTime, effective_time, format_utc, parse_timestamp

RECEIVED = datetime(2026, 8, 28, 7, 0, 0, tzinfo=UTC)
CASES = Path("/work/shared/field-cases/cases.json")


def utc(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, s, tzinfo=UTC)


# --- Q06 examples -------------------------------------------------------------------------------


def test_q06_epoch_1970_is_parsed_but_untrusted() -> None:
    p = parse_timestamp("1970-01-01T00:00:23Z", RECEIVED)
    assert p.value == utc(1970, 1, 1, 0, 0, 23)
    assert p.trusted is False
    assert p.raw == "1970-01-01T00:00:23Z"


def test_q06_naive_is_assumed_utc() -> None:
    p = parse_timestamp("2023-10-19T15:28:07", RECEIVED)
    assert p.value == utc(2023, 10, 19, 15, 28, 7)
    assert p.assumed_utc is True
    assert p.trusted is True


def test_q06_offset_hours_only() -> None:
    p = parse_timestamp("2024-04-26T14:35:02+02", RECEIVED)
    assert p.value == utc(2024, 4, 26, 12, 35, 2)
    assert p.assumed_utc is False
    assert p.trusted is True


def test_q04_local_offset_converted_to_utc() -> None:
    p = parse_timestamp("2026-01-05T14:58:38+10:00", RECEIVED)
    assert p.value == utc(2026, 1, 5, 4, 58, 38)
    assert p.value is not None and p.value.tzinfo is UTC


def test_all_field_case_timestamps_parse_without_raising() -> None:
    if not CASES.exists():
        pytest.skip("field cases not available")
    seen = 0

    def walk(obj: object) -> None:
        nonlocal seen
        if isinstance(obj, dict):
            for k, v in obj.items():
                if k in ("timestamp", "currentTime", "startSchedule"):
                    parse_timestamp(v, RECEIVED)
                    seen += 1
                walk(v)
        elif isinstance(obj, list):
            for v in obj:
                walk(v)

    walk(json.loads(CASES.read_text()))
    assert seen > 10


# --- accepted forms -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2024-04-26T14:35:02Z", utc(2024, 4, 26, 14, 35, 2)),
        ("2024-04-26T14:35:02z", utc(2024, 4, 26, 14, 35, 2)),
        ("2024-04-26t14:35:02Z", utc(2024, 4, 26, 14, 35, 2)),
        ("2024-04-26 14:35:02Z", utc(2024, 4, 26, 14, 35, 2)),
        ("2024-04-26T14:35:02+02:00", utc(2024, 4, 26, 12, 35, 2)),
        ("2024-04-26T14:35:02+0200", utc(2024, 4, 26, 12, 35, 2)),
        ("2024-04-26T14:35:02+02", utc(2024, 4, 26, 12, 35, 2)),
        ("2024-04-26T14:35:02-05:30", utc(2024, 4, 26, 20, 5, 2)),
        ("2024-04-26T14:35:02+00:00", utc(2024, 4, 26, 14, 35, 2)),
        ("  2024-04-26T14:35:02Z  ", utc(2024, 4, 26, 14, 35, 2)),
        ("2024-04-26T14:35:02.5z", datetime(2024, 4, 26, 14, 35, 2, 500000, tzinfo=UTC)),
        ("2024-04-26T14:35:02,25Z", datetime(2024, 4, 26, 14, 35, 2, 250000, tzinfo=UTC)),
        ("2024-04-26T14:35:60Z", utc(2024, 4, 26, 14, 35, 59)),
        ("2024-04-26T24:00:00Z", utc(2024, 4, 27, 0, 0, 0)),
        ("2024-04-26T14:35Z", utc(2024, 4, 26, 14, 35, 0)),
    ],
)
def test_lenient_forms(raw: str, expected: datetime) -> None:
    p = parse_timestamp(raw, RECEIVED)
    assert p.value == expected
    assert p.raw == raw
    assert p.trusted is True
    assert p.assumed_utc is False


@pytest.mark.parametrize("digits", range(10))
def test_fraction_0_to_9_digits_truncated_to_microseconds(digits: int) -> None:
    frac = "123456789"[:digits]
    raw = "2024-04-26T14:35:02" + (f".{frac}" if digits else "") + "Z"
    p = parse_timestamp(raw, RECEIVED)
    micro = int((frac + "000000")[:6]) if digits else 0
    assert p.value == datetime(2024, 4, 26, 14, 35, 2, micro, tzinfo=UTC)
    # lower-case z goes through the fallback path: same result
    assert parse_timestamp(raw[:-1] + "z", RECEIVED).value == p.value


def test_naive_with_space_and_fraction() -> None:
    p = parse_timestamp("2023-10-19 15:28:07.123", RECEIVED)
    assert p.value == datetime(2023, 10, 19, 15, 28, 7, 123000, tzinfo=UTC)
    assert p.assumed_utc is True


# --- garbage ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        "",
        " ",
        "garbage",
        "not a timestamp at all",
        "2024-04-26",  # a date is not a point in time
        "2024-13-01T00:00:00Z",
        "2024-02-30T00:00:00Z",
        "2024-04-26T25:00:00Z",
        "2024-04-26T14:35:02+25:00",
        "0001-01-01T00:00:00+01:00",  # overflows on conversion to UTC
        "9999-12-31T23:59:59-01:00",
        "2024-04-26T14:35:02Z" + "0" * 200,
    ],
)
def test_garbage_strings(raw: str) -> None:
    p = parse_timestamp(raw, RECEIVED)
    assert p == ParsedTime(value=None, raw=raw, trusted=False, assumed_utc=False)


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        (0, "0"),
        (1714142102, "1714142102"),
        (1.5, "1.5"),
        (True, "True"),
        ({"a": 1}, "{'a': 1}"),
        ([], "[]"),
        (b"2024-04-26T14:35:02Z", "b'2024-04-26T14:35:02Z'"),
    ],
)
def test_non_strings_are_unparseable_but_kept(raw: object, text: str) -> None:
    p = parse_timestamp(raw, RECEIVED)
    assert p == ParsedTime(value=None, raw=text, trusted=False, assumed_utc=False)


def test_missing() -> None:
    assert parse_timestamp(None, RECEIVED) == ParsedTime(None, None, False, False)


def test_unprintable_object_does_not_raise() -> None:
    class Evil:
        def __str__(self) -> str:
            raise RuntimeError("no")

    p = parse_timestamp(Evil(), RECEIVED)
    assert p.value is None and p.trusted is False and p.raw == "<unprintable>"


# --- trust --------------------------------------------------------------------------------------


def test_future_beyond_skew_is_untrusted() -> None:
    ahead = RECEIVED + timedelta(seconds=601)
    p = parse_timestamp(format_utc(ahead), RECEIVED)
    assert p.value is not None and p.trusted is False
    assert parse_timestamp(format_utc(ahead), RECEIVED, skew_tolerance_s=3600).trusted is True


def test_future_within_skew_is_trusted() -> None:
    assert parse_timestamp(format_utc(RECEIVED + timedelta(seconds=600)), RECEIVED).trusted


def test_q06_local_time_labelled_z_two_hours_ahead_is_untrusted() -> None:
    # Chago: local wall time sent with 'Z', two hours ahead of the real UTC time
    assert parse_timestamp("2026-08-28T09:00:00Z", RECEIVED).trusted is False


def test_before_2010_is_untrusted() -> None:
    assert parse_timestamp("2009-12-31T23:59:59Z", RECEIVED).trusted is False
    assert parse_timestamp("2010-01-01T00:00:00Z", RECEIVED).trusted is True
    assert parse_timestamp("2000-01-01T00:00:00Z", RECEIVED).trusted is False


def test_naive_received_at_is_read_as_utc() -> None:
    p = parse_timestamp("2026-08-28T07:05:00Z", datetime(2026, 8, 28, 7, 0, 0))
    assert p.trusted is True


def test_received_at_in_other_zone() -> None:
    tokyo = RECEIVED.astimezone(timezone(timedelta(hours=9)))
    assert parse_timestamp("2026-08-28T07:09:00Z", tokyo).trusted is True
    assert parse_timestamp("2026-08-28T07:11:00Z", tokyo).trusted is False


# --- effective_time -----------------------------------------------------------------------------


def test_effective_time_uses_trusted_charger_time() -> None:
    p = parse_timestamp("2026-08-28T06:59:00+00:00", RECEIVED)
    assert effective_time(p, RECEIVED) == utc(2026, 8, 28, 6, 59, 0)


def test_effective_time_falls_back_to_received_at() -> None:
    for raw in ("1970-01-01T00:00:23Z", "garbage", None, "2030-01-01T00:00:00Z"):
        assert effective_time(parse_timestamp(raw, RECEIVED), RECEIVED) == RECEIVED


def test_effective_time_naive_received_at_becomes_utc() -> None:
    out = effective_time(parse_timestamp(None, RECEIVED), datetime(2026, 8, 28, 7, 0))
    assert out == RECEIVED and out.tzinfo is UTC


# --- format_utc ---------------------------------------------------------------------------------


def test_format_utc_shape() -> None:
    dt = datetime(2026, 8, 28, 9, 0, 0, 123456, tzinfo=timezone(timedelta(hours=2)))
    assert format_utc(dt) == "2026-08-28T07:00:00.123Z"


def test_format_utc_whole_seconds_and_naive() -> None:
    assert format_utc(datetime(2026, 8, 28, 7, 0, 0)) == "2026-08-28T07:00:00.000Z"
    assert format_utc(utc(2026, 1, 5, 4, 58, 38)) == "2026-01-05T04:58:38.000Z"


def test_format_utc_truncates_milliseconds() -> None:
    assert format_utc(datetime(2026, 1, 1, 0, 0, 0, 999999, tzinfo=UTC)).endswith("00.999Z")


# --- properties ---------------------------------------------------------------------------------


@given(st.text(max_size=80))
def test_never_raises_on_text(raw: str) -> None:
    p = parse_timestamp(raw, RECEIVED)
    assert p.raw == raw
    if p.value is None:
        assert p.trusted is False
    else:
        assert p.value.tzinfo is UTC


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=10,
)


@given(_JSON)
def test_never_raises_on_json(raw: object) -> None:
    parse_timestamp(raw, RECEIVED)


@given(
    st.datetimes(
        min_value=datetime(1900, 1, 2),
        max_value=datetime(9999, 12, 30),
        timezones=st.sampled_from(
            [UTC, timezone(timedelta(hours=-7)), timezone(timedelta(hours=5, minutes=45))]
        ),
    )
)
def test_format_then_parse_round_trips_to_the_millisecond(dt: datetime) -> None:
    p = parse_timestamp(format_utc(dt), RECEIVED)
    expected = dt.astimezone(UTC).replace(microsecond=dt.microsecond // 1000 * 1000)
    assert p.value == expected
    assert p.assumed_utc is False


def test_fast_enough_for_every_message() -> None:
    samples = [
        "2026-08-28T07:00:00Z",
        "2024-04-26T14:35:02+02",
        "2024-04-26t14:35:02.123z",
        "garbage",
    ] * 5000
    start = time.perf_counter()
    for s in samples:
        parse_timestamp(s, RECEIVED)
    elapsed = time.perf_counter() - start
    assert elapsed < 2.0, f"{len(samples)} parses took {elapsed:.3f}s"
