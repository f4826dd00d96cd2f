"""Lenient parsing of charger timestamps and strict UTC formatting of ours.

Pure functions, no I/O. Every OCPP ``dateTime`` field a charger sends passes through
:func:`parse_timestamp`, which never raises: a bad timestamp must not turn a ``MeterValues`` or
``StopTransaction`` into an ``InternalError`` CALLERROR (the charger would resend it forever).

Sources:
    * OCPP 1.6: every ``dateTime`` field (``MeterValue.timestamp`` §7.33,
      ``StartTransaction.req.timestamp``, ``StatusNotification.req.timestamp``...) is ISO 8601;
      the JSON schemas only say ``"format": "date-time"``, which the usual validators do not check,
      so anything can reach us.
    * OCPP 2.0.1 Part 2, "Time Zones": time values SHALL be exchanged as UTC with the designator
      ``Z`` (``MeterValueType.timestamp``, ``TransactionEventRequest.timestamp``...). Stations
      ignore this.
    * Field case Q06 (``shared/field-cases/cases.json``): epoch-1970 stamps before the clock is
      synced, naive ``2023-10-19T15:28:07``, ``+02`` offsets without minutes; Q04: local time with
      ``+10:00``.

What is accepted: ``Z``/``z``, ``+hh:mm``, ``+hhmm``, ``+hh``, ``-hh:mm``; 0-9 (or more) fractional
digits, ``.`` or ``,`` (beyond 6 truncated); ``T``/``t``/space between date and time; leading and
trailing blanks; a leap second ``:60`` (read as ``:59``) and ``24:00:00`` (the next midnight).
No zone at all => UTC is assumed and :attr:`ParsedTime.assumed_utc` is set. A date without a time
is rejected (it is not a point in time).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

__all__ = [
    "EARLIEST_TRUSTED",
    "ParsedTime",
    "effective_time",
    "format_utc",
    "parse_timestamp",
]

EARLIEST_TRUSTED = datetime(2010, 1, 1, tzinfo=UTC)
"""Charger times before this are clocks that were never set (1970 epoch, 2000 RTC default)."""

_MAX_LEN = 64
"""Longer strings are not timestamps; they are not even looked at (keeps the parser O(1))."""

# Fallback for what datetime.fromisoformat (3.11) refuses: lower-case 'z', blanks, leap second,
# 24:00. Compiled once at import.
_FALLBACK = re.compile(
    r"""
    (?P<y>\d{4})-(?P<mo>\d{2})-(?P<d>\d{2})
    [Tt\x20]\s*
    (?P<h>\d{2}):(?P<mi>\d{2})(?::(?P<s>\d{2})(?:[.,](?P<f>\d+))?)?
    \s*
    (?:(?P<z>[Zz])|(?P<sign>[+-])(?P<oh>\d{2})(?::?(?P<om>\d{2}))?)?
    """,
    re.VERBOSE | re.ASCII,
)

@dataclass(frozen=True, slots=True)
class ParsedTime:
    """A charger timestamp as parsed, with what we think of it.

    Attributes:
        value: timezone-aware UTC datetime, or ``None`` if missing or unparseable. Set even when
            not trusted (a 1970 stamp still orders the charger's own messages).
        raw: exactly what the charger sent (``str()`` of a non-string), ``None`` if absent.
        trusted: ``False`` if unparseable, before :data:`EARLIEST_TRUSTED` (2010-01-01Z), or later
            than ``received_at + skew_tolerance_s``.
        assumed_utc: the string carried no zone designator and UTC was assumed.
    """

    value: datetime | None
    raw: str | None
    trusted: bool
    assumed_utc: bool


_MISSING = ParsedTime(value=None, raw=None, trusted=False, assumed_utc=False)


def _as_utc(dt: datetime) -> datetime:
    """Naive => UTC; aware => converted to UTC."""
    if dt.tzinfo is None:
        return dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


def _fallback(s: str) -> tuple[datetime, bool] | None:
    """Parse with :data:`_FALLBACK`; ``(utc datetime, assumed_utc)`` or ``None``."""
    m = _FALLBACK.fullmatch(s)
    if m is None:
        return None
    second = int(m["s"] or 0)
    if second == 60:  # leap second: the charger's second 60 is our second 59
        second = 59
    frac = m["f"] or ""
    micro = int((frac + "000000")[:6])
    hour = int(m["h"])
    extra = timedelta(0)
    if hour == 24:  # ISO 8601 end-of-day
        if int(m["mi"]) or second or micro:
            return None
        hour, extra = 0, timedelta(days=1)
    if m["z"]:
        tz: timezone | None = UTC
    elif m["sign"]:
        off = timedelta(hours=int(m["oh"]), minutes=int(m["om"] or 0))
        if off >= timedelta(hours=24):
            return None
        tz = timezone(-off if m["sign"] == "-" else off)
    else:
        tz = None
    dt = datetime(
        int(m["y"]), int(m["mo"]), int(m["d"]), hour, int(m["mi"]), second, micro, tzinfo=tz
    ) + extra
    return _as_utc(dt), tz is None


def parse_timestamp(
    raw: object, received_at: datetime, skew_tolerance_s: int = 600
) -> ParsedTime:
    """Parse a charger ``dateTime`` leniently. Never raises.

    Args:
        raw: the JSON value as received (normally ``str``; anything else is unparseable).
        received_at: server receive time of the message (aware; naive is read as UTC).
        skew_tolerance_s: how far (seconds) the charger clock may run ahead of ours and still
            be trusted.

    Returns:
        A :class:`ParsedTime`. ``value`` is ``None`` for ``None``, non-strings, ``''``, garbage and
        date-only strings; ``trusted`` is then ``False``.
    """
    if raw is None:
        return _MISSING
    if not isinstance(raw, str):
        try:
            text = str(raw)
        except Exception:
            text = "<unprintable>"
        return ParsedTime(value=None, raw=text, trusted=False, assumed_utc=False)
    value: datetime | None = None
    assumed = False
    try:
        s = raw
        # A time part is required: fromisoformat would take '2024-04-26' as midnight.
        if 11 <= len(s) <= _MAX_LEN and ("T" in s or " " in s or "t" in s):
            try:
                dt = datetime.fromisoformat(s)
            except ValueError:
                parsed = _fallback(s.strip())
                if parsed is not None:
                    value, assumed = parsed
            else:
                assumed = dt.tzinfo is None
                value = _as_utc(dt)
    except (ValueError, OverflowError, TypeError):
        # e.g. '0001-01-01T00:00:00+01:00' overflows on conversion to UTC.
        value, assumed = None, False
    if value is None:
        return ParsedTime(value=None, raw=raw, trusted=False, assumed_utc=False)
    try:
        limit = _as_utc(received_at) + timedelta(seconds=skew_tolerance_s)
        trusted = EARLIEST_TRUSTED <= value <= limit
    except (OverflowError, TypeError, AttributeError):
        trusted = False
    return ParsedTime(value=value, raw=raw, trusted=trusted, assumed_utc=assumed)


def effective_time(p: ParsedTime, received_at: datetime) -> datetime:
    """The time to use for durations and fees: the charger's if trusted, else ``received_at``.

    Returns an aware UTC datetime (a naive ``received_at`` is read as UTC).
    """
    if p.trusted and p.value is not None:
        return p.value
    return _as_utc(received_at)


def format_utc(dt: datetime) -> str:
    """Format as OCPP wants to see it: UTC, millisecond precision, ``Z`` suffix.

    ``datetime(2026, 8, 28, 9, 0, 0, 123456, tzinfo=+02:00)`` -> ``'2026-08-28T07:00:00.123Z'``.
    A naive datetime is read as UTC. Milliseconds are truncated, not rounded, so the result never
    lies in the future of ``dt``.
    """
    u = _as_utc(dt)
    return (
        f"{u.year:04d}-{u.month:02d}-{u.day:02d}T{u.hour:02d}:{u.minute:02d}:{u.second:02d}"
        f".{u.microsecond // 1000:03d}Z"
    )
