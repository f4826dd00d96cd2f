"""csms.metering: normalisation of 1.6/2.0.1 meter values and energy of one transaction.

Values come from the field cases Q03, Q04, Q06, Q10, Q11 (shared/field-cases/cases.json).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from csms.metering import (
    EAIR,
    MAX_WARNINGS,
    EnergyResult,
    EnergyState,
    Sample,
    energy_so_far,
    new_state,
    normalise_meter_values,
    observe,
    observe_meter_values,
    settle_energy,
)

RX = datetime(2026, 8, 28, 12, 0, 0, tzinfo=UTC)
T0 = datetime(2026, 8, 28, 7, 0, 0, tzinfo=UTC)
CASES_PATH = Path("/work/shared/field-cases/cases.json")


def case_frames(prefix: str) -> list[Any]:
    if not CASES_PATH.exists():
        pytest.skip("field cases not available")
    for case in json.loads(CASES_PATH.read_text()):
        if case["id"].startswith(prefix):
            return list(case["frames"])
    raise AssertionError(prefix)


def frame(prefix: str, unique_id: str) -> dict[str, Any]:
    for f in case_frames(prefix):
        if f[1] == unique_id:
            return dict(f[-1])
    raise AssertionError(unique_id)


def mv16(
    value: str | None,
    minutes: float | None = None,
    context: str | None = "Sample.Periodic",
    unit: str | None = "Wh",
    **extra: str,
) -> dict[str, Any]:
    """A 1.6 MeterValue with one sampled value, ``minutes`` after T0 (None = no timestamp)."""
    sv: dict[str, Any] = {"measurand": EAIR, **extra}
    if value is not None:
        sv["value"] = value
    if context is not None:
        sv["context"] = context
    if unit is not None:
        sv["unit"] = unit
    out: dict[str, Any] = {"sampledValue": [sv]}
    if minutes is not None:
        out["timestamp"] = (T0 + timedelta(minutes=minutes)).isoformat()
    return out


def feed(state: EnergyState, *meter_values: dict[str, Any]) -> list[str]:
    _, warnings = observe_meter_values(state, list(meter_values), RX)
    return warnings


def one(meter_values: Any) -> tuple[Sample, list[str]]:
    samples, warnings = normalise_meter_values(meter_values, RX)
    assert len(samples) == 1, (samples, warnings)
    return samples[0], warnings


# ================================================================================================
# Normalisation


def test_16_sample_all_fields() -> None:
    s, warnings = one(
        [
            {
                "timestamp": "2026-08-28T07:05:00Z",
                "sampledValue": [
                    {
                        "value": "5.84",
                        "context": "Sample.Periodic",
                        "format": "Raw",
                        "measurand": "Current.Import",
                        "phase": "L1",
                        "location": "Outlet",
                        "unit": "A",
                    }
                ],
            }
        ]
    )
    assert warnings == []
    assert (s.measurand, s.phase, s.location, s.context, s.unit) == (
        "Current.Import",
        "L1",
        "Outlet",
        "Sample.Periodic",
        "A",
    )
    assert s.value == Decimal("5.84") and s.raw_value == "5.84" and s.raw_unit == "A"
    assert s.format == "Raw" and s.signed_data is None
    assert s.timestamp.value == datetime(2026, 8, 28, 7, 5, tzinfo=UTC) and s.timestamp.trusted


def test_16_defaults_when_fields_absent() -> None:
    s, warnings = one([{"timestamp": "2026-08-28T07:05:00Z", "sampledValue": [{"value": "42"}]}])
    assert warnings == []
    assert s.measurand == EAIR
    assert s.phase is None
    assert s.location == "Outlet"
    assert s.context == "Sample.Periodic"
    assert s.unit == "Wh" and s.raw_unit is None
    assert s.format == "Raw"
    assert s.value == Decimal(42)


@pytest.mark.parametrize(
    ("measurand", "unit"),
    [
        (EAIR, "Wh"),
        ("Energy.Reactive.Import.Register", "varh"),
        ("Energy.Active.Import.Interval", "Wh"),
        ("Energy.Apparent.Import", "VAh"),
        ("Power.Active.Import", "W"),
        ("Power.Offered", "W"),
        ("Power.Reactive.Import", "var"),
        ("Power.Factor", ""),
        ("Current.Import", "A"),
        ("Current.Offered", "A"),
        ("Voltage", "V"),
        ("Frequency", "Hertz"),
        ("Temperature", "Celsius"),
        ("SoC", "Percent"),
        ("RPM", "RPM"),
    ],
)
def test_default_unit_per_measurand(measurand: str, unit: str) -> None:
    s, _ = one(
        [
            {
                "timestamp": "2026-08-28T07:05:00Z",
                "sampledValue": [{"value": "1", "measurand": measurand}],
            }
        ]
    )
    assert s.unit == unit


@pytest.mark.parametrize(
    ("raw_unit", "value", "unit", "expected"),
    [
        ("Wh", "10", "Wh", "10"),
        ("kWh", "12.345", "Wh", "12345"),
        ("kwh", "1.5", "Wh", "1500"),
        ("KWH", "1.5", "Wh", "1500"),
        (" kWh ", "2", "Wh", "2000"),
        ("W", "7400", "W", "7400"),
        ("kW", "7.4", "W", "7400"),
        ("kw", "11", "W", "11000"),
        ("var", "5", "var", "5"),
        ("kvar", "0.5", "var", "500"),
        ("kVA", "1", "VA", "1000"),
        ("A", "16", "A", "16"),
        ("V", "230.1", "V", "230.1"),
        ("Percent", "80", "Percent", "80"),
        ("%", "80", "Percent", "80"),
        ("Celsius", "21.5", "Celsius", "21.5"),
        ("Celcius", "21.5", "Celsius", "21.5"),
        ("Fahrenheit", "70", "Fahrenheit", "70"),
        ("K", "300", "K", "300"),
        ("Hz", "50.0", "Hertz", "50.0"),
        ("hz", "50.0", "Hertz", "50.0"),
        ("Hertz", "50.0", "Hertz", "50.0"),
    ],
)
def test_units_are_normalised(raw_unit: str, value: str, unit: str, expected: str) -> None:
    measurand = {
        "Wh": EAIR,
        "W": "Power.Active.Import",
        "var": "Power.Reactive.Import",
        "VA": "Power.Offered",
        "A": "Current.Import",
        "V": "Voltage",
        "Percent": "SoC",
        "Celsius": "Temperature",
        "Fahrenheit": "Temperature",
        "K": "Temperature",
        "Hertz": "Frequency",
    }[unit]
    s, _ = one(
        [
            {
                "timestamp": "2026-08-28T07:05:00Z",
                "sampledValue": [{"value": value, "measurand": measurand, "unit": raw_unit}],
            }
        ]
    )
    assert s.unit == unit
    assert s.value == Decimal(expected)
    assert s.raw_unit == raw_unit
    assert s.raw_value == value


def test_kvarh_for_reactive_energy() -> None:
    s, _ = one(
        [
            {
                "timestamp": "2026-08-28T07:05:00Z",
                "sampledValue": [
                    {"value": "2", "measurand": "Energy.Reactive.Import.Register", "unit": "kvarh"}
                ],
            }
        ]
    )
    assert (s.unit, s.value) == ("varh", Decimal(2000))


def test_q11_hz_is_hertz_and_energy_still_recorded() -> None:
    samples, warnings = normalise_meter_values(frame("Q11", "mv-1101")["meterValue"], RX)
    assert warnings == []
    by = {s.measurand: s for s in samples}
    assert by[EAIR].value == Decimal(10450) and by[EAIR].unit == "Wh"
    assert by["Frequency"].unit == "Hertz" and by["Frequency"].raw_unit == "Hz"
    assert by["Frequency"].value == Decimal("50.0")


def test_q11_stop_transaction_data_with_hertz() -> None:
    samples, warnings = normalise_meter_values(frame("Q11", "sp-1103")["transactionData"], RX)
    assert warnings == []
    by = {s.measurand: s for s in samples}
    assert by[EAIR].context == "Transaction.End" and by[EAIR].value == Decimal(10980)
    assert by["Frequency"].unit == "Hertz"


def test_q10_empty_value_is_no_sample_never_zero() -> None:
    samples, warnings = normalise_meter_values(frame("Q10", "mv-1004")["meterValue"], RX)
    assert samples == []
    assert len(warnings) == 2
    assert all("empty" in w for w in warnings)


def test_q06_epoch_timestamp_kept_untrusted() -> None:
    s, warnings = one(frame("Q06", "offline-6")["meterValue"])
    assert s.context == "Trigger" and s.value == Decimal("0.0")
    assert s.timestamp.trusted is False
    assert s.timestamp.raw == "1970-01-01T00:00:23Z"
    assert any("not trusted" in w for w in warnings)


@pytest.mark.parametrize(
    "bad",
    ["abc", "12,5", "NaN", "Infinity", "-inf", "1e999", "0x10", "1" * 100, True, None, [], {}],
)
def test_non_numeric_values_are_dropped(bad: object) -> None:
    samples, warnings = normalise_meter_values(
        [{"timestamp": "2026-08-28T07:05:00Z", "sampledValue": [{"value": bad}]}], RX
    )
    assert samples == []
    assert len(warnings) == 1


def test_missing_value_is_dropped() -> None:
    samples, warnings = normalise_meter_values(
        [{"timestamp": "2026-08-28T07:05:00Z", "sampledValue": [{"measurand": EAIR}]}], RX
    )
    assert samples == [] and "no value" in warnings[0]


def test_unknown_unit_kept_for_non_energy() -> None:
    s, warnings = one(
        [
            {
                "timestamp": "2026-08-28T07:05:00Z",
                "sampledValue": [{"value": "3", "measurand": "Temperature", "unit": "Kelvinish"}],
            }
        ]
    )
    assert s.unit == "Kelvinish" and s.value == Decimal(3)
    assert len(warnings) == 1 and "kept" in warnings[0]


@pytest.mark.parametrize("unit", ["Joule", "W", "kW", "A", "varh"])
def test_energy_with_unconvertible_unit_is_dropped(unit: str) -> None:
    samples, warnings = normalise_meter_values(
        [
            {
                "timestamp": "2026-08-28T07:05:00Z",
                "sampledValue": [
                    {"value": "3", "measurand": EAIR, "unit": unit},
                    {"value": "5", "measurand": "Voltage", "unit": "V"},
                ],
            }
        ],
        RX,
    )
    assert [s.measurand for s in samples] == ["Voltage"]
    assert len(warnings) == 1 and "no sample" in warnings[0]


def test_enums_are_case_tolerant_and_stripped() -> None:
    s, warnings = one(
        [
            {
                "timestamp": "2026-08-28T07:05:00Z",
                "sampledValue": [
                    {
                        "value": "1",
                        "measurand": "energy.active.import.register ",
                        "context": "sample.clock",
                        "location": "outlet",
                        "phase": "l1-n",
                        "format": "raw",
                    }
                ],
            }
        ]
    )
    assert warnings == []
    assert (s.measurand, s.context, s.location, s.phase, s.format) == (
        EAIR,
        "Sample.Clock",
        "Outlet",
        "L1-N",
        "Raw",
    )


def test_unknown_enum_values_kept_with_warning() -> None:
    s, warnings = one(
        [
            {
                "timestamp": "2026-08-28T07:05:00Z",
                "sampledValue": [
                    {"value": "1", "measurand": "Vendor.Thing", "context": "Boot", "unit": "W"}
                ],
            }
        ]
    )
    assert s.measurand == "Vendor.Thing" and s.context == "Boot"
    assert len(warnings) == 2


def test_wrongly_typed_enum_falls_back_to_default() -> None:
    s, warnings = one(
        [
            {
                "timestamp": "2026-08-28T07:05:00Z",
                "sampledValue": [
                    {"value": "1", "measurand": 7, "context": ["x"], "location": "", "phase": ""}
                ],
            }
        ]
    )
    assert (s.measurand, s.context, s.location, s.phase) == (
        EAIR,
        "Sample.Periodic",
        "Outlet",
        None,
    )
    assert len(warnings) == 2


def test_201_number_values_with_unit_of_measure_and_multiplier() -> None:
    samples, warnings = normalise_meter_values(
        [
            {
                "timestamp": "2026-08-28T07:05:00.000Z",
                "sampledValue": [
                    {
                        "value": 12.5,
                        "measurand": EAIR,
                        "context": "Sample.Periodic",
                        "unitOfMeasure": {"unit": "kWh"},
                    },
                    {
                        "value": 7,
                        "measurand": EAIR,
                        "location": "Inlet",
                        "unitOfMeasure": {"unit": "Wh", "multiplier": 3},
                    },
                    {
                        "value": 2301,
                        "measurand": "Voltage",
                        "phase": "L1-N",
                        "unitOfMeasure": {"unit": "V", "multiplier": -1},
                    },
                    {
                        "value": 11,
                        "measurand": "Power.Active.Import",
                        "unitOfMeasure": {"unit": "kW", "multiplier": 0},
                    },
                    {"value": 50, "measurand": "Frequency", "unitOfMeasure": {"unit": "Hz"}},
                    {"value": 80, "measurand": "SoC", "unitOfMeasure": {}},
                ],
            }
        ],
        RX,
    )
    assert warnings == []
    got = [(s.measurand, s.unit, s.value) for s in samples]
    assert got == [
        (EAIR, "Wh", Decimal("12500.0")),
        (EAIR, "Wh", Decimal(7000)),
        ("Voltage", "V", Decimal("230.1")),
        ("Power.Active.Import", "W", Decimal(11000)),
        ("Frequency", "Hertz", Decimal(50)),
        ("SoC", "Percent", Decimal(80)),
    ]
    assert samples[0].raw_value == "12.5" and samples[0].raw_unit == "kWh"


@pytest.mark.parametrize("multiplier", ["x", 1.5, True, 99, [1]])
def test_201_bad_multiplier_drops_sample(multiplier: object) -> None:
    samples, warnings = normalise_meter_values(
        [
            {
                "timestamp": "2026-08-28T07:05:00Z",
                "sampledValue": [
                    {"value": 1, "unitOfMeasure": {"unit": "Wh", "multiplier": multiplier}}
                ],
            }
        ],
        RX,
    )
    assert samples == [] and "multiplier" in warnings[0]


def test_201_signed_meter_value_kept_as_json_next_to_the_number() -> None:
    smv = {
        "signedMeterData": "AbCd==",
        "signingMethod": "ECDSAP256SHA256",
        "encodingMethod": "OCMF",
        "publicKey": "pk",
    }
    s, warnings = one(
        [
            {
                "timestamp": "2026-08-28T07:05:00Z",
                "sampledValue": [
                    {
                        "value": 1234,
                        "measurand": EAIR,
                        "context": "Transaction.End",
                        "signedMeterValue": smv,
                    }
                ],
            }
        ]
    )
    assert warnings == []
    assert s.format == "SignedData"
    assert s.value == Decimal(1234)
    assert s.signed_data is not None and json.loads(s.signed_data) == smv


def test_16_signed_data_is_kept_but_not_a_number() -> None:
    samples, warnings = normalise_meter_values(
        [
            {
                "timestamp": "2026-08-28T07:05:00Z",
                "sampledValue": [
                    {"value": "OCMF|{...}|{...}", "format": "SignedData", "measurand": EAIR},
                    # all hex digits: must not be read as a 1.2 GWh register
                    {"value": "0123456789", "format": "SignedData", "measurand": EAIR},
                    {"value": "4000", "format": "Raw", "measurand": EAIR},
                ],
            }
        ],
        RX,
    )
    assert warnings == []
    signed = [s for s in samples if s.format == "SignedData"]
    assert [s.signed_data for s in signed] == ["OCMF|{...}|{...}", "0123456789"]
    assert all(s.value is None for s in signed)
    state = new_state(None, T0)
    observe(state, samples)
    assert state.last_wh == Decimal(4000)


def test_snake_case_keys_from_the_ocpp_library() -> None:
    s, _ = one(
        [
            {
                "timestamp": "2026-08-28T07:05:00Z",
                "sampled_value": [
                    {
                        "value": 5,
                        "unit_of_measure": {"unit": "kWh", "multiplier": 0},
                        "signed_meter_value": {"signed_meter_data": "x"},
                    }
                ],
            }
        ]
    )
    assert (s.unit, s.value, s.format) == ("Wh", Decimal(5000), "SignedData")


def test_missing_timestamp_still_gives_samples() -> None:
    s, warnings = one([{"sampledValue": [{"value": "1"}]}])
    assert s.timestamp.value is None and s.timestamp.trusted is False
    assert "timestamp" in warnings[0]


def test_naive_timestamp_warns_assumed_utc() -> None:
    s, warnings = one([{"timestamp": "2026-08-28T07:05:00", "sampledValue": [{"value": "1"}]}])
    assert s.timestamp.assumed_utc
    assert "UTC assumed" in warnings[0]


@pytest.mark.parametrize(
    "garbage",
    [
        "meterValue",
        42,
        1.5,
        True,
        [None, 1, "x", [], {}],
        [{"sampledValue": "x"}],
        [{"sampledValue": None}],
        [{"sampledValue": [None, 3, "x", []]}],
        [{"timestamp": 5}],
    ],
)
def test_garbage_never_raises(garbage: object) -> None:
    samples, warnings = normalise_meter_values(garbage, RX)
    assert samples == []
    assert warnings


def test_none_is_an_absent_optional_field() -> None:
    assert normalise_meter_values(None, RX) == ([], [])
    assert normalise_meter_values([], RX) == ([], [])


def test_single_objects_instead_of_lists_are_tolerated() -> None:
    samples, warnings = normalise_meter_values(
        {"timestamp": "2026-08-28T07:05:00Z", "sampledValue": {"value": "9"}}, RX
    )
    assert [s.value for s in samples] == [Decimal(9)]
    assert len(warnings) == 2


def test_warnings_are_capped() -> None:
    samples, warnings = normalise_meter_values(
        [{"timestamp": "2026-08-28T07:05:00Z", "sampledValue": [{"value": ""}] * 500}], RX
    )
    assert samples == []
    assert len(warnings) == MAX_WARNINGS + 1
    assert warnings[-1] == "... and 400 more warnings"


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(["Wh", "kWh", "Hz", EAIR, "Transaction.Begin", "SignedData", "", "12.5"]),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "value",
                    "unit",
                    "measurand",
                    "context",
                    "format",
                    "phase",
                    "location",
                    "timestamp",
                    "sampledValue",
                    "unitOfMeasure",
                    "multiplier",
                    "signedMeterValue",
                    "x",
                ]
            ),
            children,
            max_size=6,
        )
    ),
    max_leaves=25,
)


@settings(max_examples=300)
@given(_JSON)
def test_property_normalise_never_raises(garbage: object) -> None:
    samples, warnings = normalise_meter_values(garbage, RX)
    assert all(isinstance(w, str) for w in warnings)
    for s in samples:
        assert s.value is None or s.value.is_finite()
        assert s.value is not None or s.signed_data is not None
    state = new_state(0, T0)
    observe(state, samples)
    assert settle_energy(state, None).energy_wh >= 0


# ================================================================================================
# Energy


def test_q03_session_relative_metervalues_lifetime_start_stop() -> None:
    start = frame("Q03", "st-0301")
    state = new_state(start["meterStart"], T0)
    observe_meter_values(state, frame("Q03", "mv-0302")["meterValue"], RX)
    assert energy_so_far(state) == 113
    assert state.session_relative is True
    result = settle_energy(state, frame("Q03", "sp-0303")["meterStop"])
    assert result == EnergyResult(113, "meter_stop", ("session_relative",))


def test_q03_meter_stop_minus_one_falls_back_to_last_reading() -> None:
    state = new_state(4076300, T0)
    observe_meter_values(state, frame("Q03", "mv-0302")["meterValue"], RX)
    result = settle_energy(state, frame("Q03", "sp-0304")["meterStop"])
    assert result.energy_wh == 113
    assert result.source == "samples"
    assert "meter_invalid" in result.flags


def test_q03_meter_stop_minus_one_without_readings_is_zero_and_invalid() -> None:
    result = settle_energy(new_state(4076300, T0), -1)
    assert result.energy_wh == 0
    assert result.source == "none"
    assert "meter_invalid" in result.flags


def test_q03_meter_stop_below_start_is_flagged_and_falls_back() -> None:
    state = new_state(4076300, T0)
    observe_meter_values(state, frame("Q03", "mv-0302")["meterValue"], RX)
    result = settle_energy(state, frame("Q03", "sp-0305")["meterStop"])  # 1200
    assert result.energy_wh == 113 and result.source == "samples"
    assert {"meter_stop_below_start", "meter_invalid"} <= set(result.flags)


def test_q03_meter_stop_below_start_without_readings() -> None:
    result = settle_energy(new_state(4076300, T0), 1200)
    assert result.energy_wh == 0
    assert {"meter_stop_below_start", "meter_invalid"} <= set(result.flags)


def test_plain_lifetime_register() -> None:
    state = new_state(4076300, T0)
    feed(state, mv16("4076300", 0, "Transaction.Begin"), mv16("4076350", 5), mv16("4076400", 10))
    assert energy_so_far(state) == 100
    assert state.session_relative is False
    assert settle_energy(state, 4076413) == EnergyResult(113, "meter_stop", ())


def test_q04_periodic_and_begin_in_the_same_list_lifetime() -> None:
    state = new_state(None, None)
    observe_meter_values(
        state, frame("Q04", "mv-0401")["meterValue"], datetime(2026, 1, 5, 5, 0, tzinfo=UTC)
    )
    assert energy_so_far(state) == 5550
    assert state.baseline_wh == Decimal(114900)
    assert state.last_wh == Decimal(120450)
    assert state.last_at == datetime(2026, 1, 5, 4, 58, 38, tzinfo=UTC)
    assert state.session_relative is False
    result = settle_energy(state, None)
    assert (result.energy_wh, result.source) == (5550, "samples")


def test_q04_begin_zero_session_relative() -> None:
    state = new_state(None, None)
    observe_meter_values(
        state, frame("Q04", "mv-0402")["meterValue"], datetime(2025, 1, 3, 16, 0, tzinfo=UTC)
    )
    assert energy_so_far(state) == 37
    assert state.session_relative is True
    assert settle_energy(state, None).energy_wh == 37


def test_q04_begin_repeated_in_every_message_is_taken_once() -> None:
    state = new_state(None, None)
    rx = datetime(2026, 1, 5, 6, 0, tzinfo=UTC)
    observe_meter_values(state, frame("Q04", "mv-0401")["meterValue"], rx)
    observe_meter_values(
        state,
        [
            {
                "timestamp": "2026-01-05T15:13:38+10:00",
                "sampledValue": [
                    {
                        "value": "121000",
                        "context": "Sample.Periodic",
                        "measurand": EAIR,
                        "unit": "Wh",
                    },
                    {
                        "value": "99999",
                        "context": "Transaction.Begin",
                        "measurand": EAIR,
                        "unit": "Wh",
                    },
                ],
            }
        ],
        rx,
    )
    assert energy_so_far(state) == 121000 - 114900


def test_q04_with_meter_start_and_stop() -> None:
    state = new_state(114900, datetime(2026, 1, 5, 4, 30, tzinfo=UTC))
    observe_meter_values(
        state, frame("Q04", "mv-0401")["meterValue"], datetime(2026, 1, 5, 5, 0, tzinfo=UTC)
    )
    assert energy_so_far(state) == 5550
    assert settle_energy(state, 121000).energy_wh == 6100


def test_session_relative_hint_per_charge_point() -> None:
    # Small meterStart (lifetime), session-relative readings that are above it.
    with_hint = new_state(50, T0, session_relative_hint=True)
    without = new_state(50, T0)
    for state in (with_hint, without):
        feed(state, mv16("60", 5), mv16("120", 10))
    assert energy_so_far(with_hint) == 120
    assert energy_so_far(without) == 70
    assert with_hint.session_relative is True


def test_wrong_session_relative_hint_is_overruled_by_plausibility() -> None:
    state = new_state(4076300, T0, session_relative_hint=True)
    feed(state, mv16("4076350", 5), mv16("4076400", 10))
    assert energy_so_far(state) == 100
    assert state.session_relative is False
    assert "baseline_implausible" in settle_energy(state, 4076413).flags
    assert settle_energy(state, 4076413).energy_wh == 113


def test_register_reset_adds_segments() -> None:
    state = new_state(50_000, T0)
    feed(state, mv16("51000", 5), mv16("52000", 10), mv16("100", 15), mv16("600", 20))
    assert energy_so_far(state) == 2000 + 600
    result = settle_energy(state, None)
    assert result.energy_wh == 2600 and "register_reset" in result.flags


def test_register_reset_twice() -> None:
    state = new_state(None, T0)
    feed(
        state,
        mv16("0", 0, "Transaction.Begin"),
        mv16("500", 5),
        mv16("1000", 10),
        mv16("50", 15),
        mv16("300", 20),
        mv16("10", 25),
        mv16("40", 30),
    )
    assert energy_so_far(state) == 1000 + 300 + 40


def test_small_decrease_is_ignored_not_a_reset() -> None:
    state = new_state(50_000, T0)
    feed(state, mv16("52000", 10), mv16("51990", 15), mv16("52100", 20))
    assert energy_so_far(state) == 2100
    flags = settle_energy(state, None).flags
    assert "register_decrease" in flags and "register_reset" not in flags


def test_offline_start_16_meter_start_zero_vs_lifetime_register() -> None:
    state = new_state(0, T0)
    feed(state, mv16("900000", 5), mv16("903000", 30))
    assert energy_so_far(state) == 3000
    feed(state, mv16("907500", 60, "Transaction.End"))
    result = settle_energy(state, 907500, stopped_at=T0 + timedelta(minutes=60))
    assert result.energy_wh == 7500
    assert result.source == "meter_stop"
    assert {"baseline_implausible", "baseline_from_samples"} <= set(result.flags)
    assert state.session_relative is False


def test_offline_start_201_begin_zero_vs_lifetime_register() -> None:
    state = new_state(None, T0)

    def tx_event(value: float, minutes: int, context: str) -> dict[str, Any]:
        return {
            "timestamp": (T0 + timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z"),
            "sampledValue": [
                {
                    "value": value,
                    "context": context,
                    "measurand": EAIR,
                    "unitOfMeasure": {"unit": "kWh"},
                }
            ],
        }

    observe_meter_values(state, [tx_event(0, 0, "Transaction.Begin")], RX)
    observe_meter_values(state, [tx_event(900.0, 5, "Sample.Periodic")], RX)
    observe_meter_values(state, [tx_event(907.5, 60, "Transaction.End")], RX)
    result = settle_energy(state, None)
    assert result.energy_wh == 7500 and result.source == "samples"
    assert "baseline_from_samples" in result.flags


def test_offline_start_without_any_times_uses_the_session_cap() -> None:
    state = new_state(0, None)
    feed(state, mv16("900000", None), mv16("907500", None))
    assert settle_energy(state, 907500).energy_wh == 7500


def test_offline_start_without_samples_is_not_billed_as_lifetime() -> None:
    result = settle_energy(new_state(0, T0), 907500, stopped_at=T0 + timedelta(hours=1))
    assert result.energy_wh == 0
    assert {"meter_implausible", "meter_invalid"} <= set(result.flags)


def test_meter_stop_implausible_for_the_connector_power() -> None:
    state = new_state(0, T0, max_power_w=22_000)
    feed(state, mv16("1000", 5), mv16("20000", 60))
    result = settle_energy(state, 90_000, stopped_at=T0 + timedelta(hours=1))
    assert result.energy_wh == 20000 and result.source == "samples"
    assert "meter_implausible" in result.flags


def test_empty_value_never_becomes_zero_wh() -> None:
    state = new_state(50_000, T0)
    feed(state, mv16("51000", 5))
    warnings = feed(state, mv16("", 10), mv16("   ", 11))
    assert len(warnings) == 2
    feed(state, mv16("51500", 15))
    assert energy_so_far(state) == 1500
    assert "register_reset" not in settle_energy(state, None).flags


def test_q10_only_empty_values_gives_no_energy() -> None:
    state = new_state(None, T0)
    observe_meter_values(state, frame("Q10", "mv-1004")["meterValue"], RX)
    assert energy_so_far(state) == 0
    result = settle_energy(state, None)
    assert result.energy_wh == 0 and result.source == "none"


def test_q06_epoch_zero_reading_does_not_bill_the_lifetime_register() -> None:
    state = new_state(4_000_000, T0)
    observe_meter_values(state, frame("Q06", "offline-6")["meterValue"], RX)  # 0.0 @ 1970
    feed(state, mv16("4000500", 30))
    assert energy_so_far(state) == 500
    assert settle_energy(state, 4_000_600).energy_wh == 600


def test_replayed_transaction_data_is_not_counted_twice() -> None:
    state = new_state(0, T0)
    feed(state, mv16("100", 5), mv16("200", 10), mv16("300", 15))
    feed(
        state,
        mv16("0", 0, "Transaction.Begin"),
        mv16("100", 5),
        mv16("200", 10),
        mv16("300", 15),
        mv16("350", 20, "Transaction.End"),
    )
    assert energy_so_far(state) == 350
    assert "register_reset" not in settle_energy(state, None).flags


def test_unphased_register_preferred_over_phases() -> None:
    state = new_state(None, T0)
    feed(
        state,
        {
            "timestamp": T0.isoformat(),
            "sampledValue": [
                {"value": "10", "measurand": EAIR, "phase": "L1", "context": "Transaction.Begin"},
                {"value": "1000", "measurand": EAIR, "context": "Transaction.Begin"},
                {"value": "110", "measurand": EAIR, "phase": "L1"},
                {"value": "1300", "measurand": EAIR},
            ],
        },
    )
    assert energy_so_far(state) == 300


def test_phase_registers_are_summed_when_no_total() -> None:
    state = new_state(None, T0)
    begin = {
        "timestamp": T0.isoformat(),
        "sampledValue": [
            {"value": v, "measurand": EAIR, "phase": p, "context": "Transaction.Begin"}
            for p, v in (("L1", "1000"), ("L2", "2000"), ("L3", "3000"))
        ],
    }
    now = {
        "timestamp": (T0 + timedelta(minutes=30)).isoformat(),
        "sampledValue": [
            {"value": v, "measurand": EAIR, "phase": p}
            for p, v in (("L1", "1100"), ("L2", "2200"), ("L3", "3300"))
        ],
    }
    feed(state, begin, now)
    assert energy_so_far(state) == 600
    assert "phase_sum" in settle_energy(state, None).flags


def test_other_measurands_and_units_are_ignored() -> None:
    state = new_state(None, T0)
    samples, _ = normalise_meter_values(
        [
            {
                "timestamp": T0.isoformat(),
                "sampledValue": [
                    {"value": "0", "context": "Transaction.Begin"},
                    {"value": "5000", "measurand": "Energy.Active.Export.Register"},
                    {"value": "7000", "measurand": "Power.Active.Import", "unit": "W"},
                    {"value": "25", "context": "Sample.Clock"},
                ],
            }
        ],
        RX,
    )
    observe(state, samples)
    assert energy_so_far(state) == 25


def test_kwh_readings_rounded_half_up() -> None:
    state = new_state(None, T0)
    feed(state, mv16("0", 0, "Transaction.Begin", "kWh"), mv16("1.0005", 5, unit="kWh"))
    assert energy_so_far(state) == 1001
    assert settle_energy(state, None).energy_wh == 1001


def test_meter_stop_missing_and_no_meter_start() -> None:
    state = new_state(None, T0)
    feed(state, mv16("10", 5), mv16("60", 10))
    result = settle_energy(state, None)
    assert result.energy_wh == 50
    assert {"meter_stop_missing", "baseline_from_samples"} <= set(result.flags)


def test_meter_stop_without_any_start_reference() -> None:
    result = settle_energy(new_state(None, T0), 5000)
    assert result == EnergyResult(
        0, "none", ("meter_start_missing", "no_energy_data", "meter_invalid")
    )


def test_meter_stop_below_what_the_samples_saw_is_flagged() -> None:
    state = new_state(1000, T0)
    feed(state, mv16("3000", 30))
    result = settle_energy(state, 1500)
    assert result.energy_wh == 500
    assert "meter_stop_below_samples" in result.flags


def test_negative_meter_start_is_unknown() -> None:
    state = new_state(-1, T0)
    assert state.meter_start is None
    feed(state, mv16("10", 5), mv16("60", 10))
    result = settle_energy(state, 60)
    assert "meter_start_invalid" in result.flags


def test_negative_readings_are_ignored() -> None:
    state = new_state(0, T0)
    feed(state, mv16("-5", 5), mv16("40", 10))
    assert energy_so_far(state) == 40
    assert "register_negative" in settle_energy(state, None).flags


def test_state_round_trips_through_json() -> None:
    state = new_state(50_000, T0, session_relative_hint=False, max_power_w=22_000)
    feed(
        state,
        mv16("50000", 0, "Transaction.Begin"),
        mv16("51000.5", 5),
        mv16("52000", 10),
        mv16("100", 15),
    )
    text = json.dumps(state.to_dict())
    again = EnergyState.from_dict(json.loads(text))
    assert again.to_dict() == state.to_dict()
    assert energy_so_far(again) == energy_so_far(state) == 2100
    assert settle_energy(again, None) == settle_energy(state, None)


@pytest.mark.parametrize(
    "damaged",
    [
        None,
        {},
        {"series": "x"},
        {"series": {"a": {"last": 1}}},
        {"meter_start": "12", "started_at": 5, "notes": "x"},
        {"series": {"k": {"first": {"wh": "1"}, "ends": ["x", 3]}}},
    ],
)
def test_from_dict_tolerates_damage(damaged: Any) -> None:
    state = EnergyState.from_dict(damaged)
    assert energy_so_far(state) >= 0
    assert settle_energy(state, None).energy_wh >= 0


def test_new_state_naive_start_is_utc() -> None:
    assert new_state(0, datetime(2026, 8, 28, 7, 0)).started_at == T0


# --- properties ---------------------------------------------------------------------------------

_CONTEXTS = st.sampled_from(
    ["Sample.Periodic", "Transaction.Begin", "Transaction.End", "Trigger", "Sample.Clock", None]
)
_READING = st.tuples(
    st.one_of(st.integers(-10, 2_000_000).map(str), st.sampled_from(["", "x", "1e3", "-0"])),
    st.one_of(st.none(), st.integers(-60, 600)),
    _CONTEXTS,
    st.sampled_from([None, None, "L1", "L2"]),
)


@settings(max_examples=300)
@given(
    readings=st.lists(_READING, max_size=12),
    meter_start=st.one_of(st.none(), st.integers(-5, 2_000_000)),
    meter_stop=st.one_of(st.none(), st.integers(-5, 2_000_000)),
    hint=st.sampled_from([None, True, False]),
    started=st.booleans(),
)
def test_property_settle_never_negative(
    readings: list[tuple[str, int | None, str | None, str | None]],
    meter_start: int | None,
    meter_stop: int | None,
    hint: bool | None,
    started: bool,
) -> None:
    state = new_state(meter_start, T0 if started else None, hint)
    for value, minutes, context, phase in readings:
        extra = {"phase": phase} if phase else {}
        feed(state, mv16(value, minutes, context, **extra))
    so_far = energy_so_far(state)
    result = settle_energy(state, meter_stop, stopped_at=T0 + timedelta(hours=10))
    assert isinstance(result.energy_wh, int) and result.energy_wh >= 0
    assert isinstance(so_far, int) and so_far >= 0
    assert result.source in ("meter_stop", "samples", "none")
    assert result.energy_wh <= state.max_session_wh
    again = EnergyState.from_dict(json.loads(json.dumps(state.to_dict())))
    assert settle_energy(again, meter_stop, stopped_at=T0 + timedelta(hours=10)) == result


@settings(max_examples=300)
@given(
    baseline=st.integers(0, 10_000_000),
    steps=st.lists(st.integers(0, 1000), min_size=1, max_size=30),
    with_begin=st.booleans(),
    kwh=st.booleans(),
)
def test_property_monotone_readings_give_last_minus_baseline(
    baseline: int, steps: list[int], with_begin: bool, kwh: bool
) -> None:
    # At most 1000 Wh per minute (60 kW): always plausible.
    state = new_state(baseline, T0)
    unit = "kWh" if kwh else "Wh"

    def v(wh: int) -> str:
        return str(Decimal(wh) / 1000) if kwh else str(wh)

    if with_begin:
        feed(state, mv16(v(baseline), 0, "Transaction.Begin", unit))
    total = baseline
    for minute, step in enumerate(steps, start=1):
        total += step
        feed(state, mv16(v(total), minute, unit=unit))
    assert energy_so_far(state) == total - baseline
    by_stop = settle_energy(state, total)
    assert (by_stop.energy_wh, by_stop.source) == (total - baseline, "meter_stop")
    assert settle_energy(state, None).energy_wh == total - baseline
    assert settle_energy(state, -1).energy_wh == total - baseline
