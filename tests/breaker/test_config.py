"""validate_config / build_driver: every error names its key; secrets only via env vars."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from breaker.config import build_driver, validate_config
from breaker.driver import ConfigError
from breaker.modbus import ModbusBreaker
from breaker.mqtt import MqttBreaker
from breaker.ocpp_relay import OcppRelayBreaker, RelaySnapshot
from breaker.simulated import SimulatedBreaker

SHELLY = {"type": "mqtt", "preset": "shelly_gen2", "host": "broker", "prefix": "shellyplus1pm-1"}
TASMOTA = {"type": "mqtt", "preset": "tasmota", "host": "broker", "topic": "plug1"}
GENERIC = {
    "type": "mqtt", "preset": "generic", "host": "broker",
    "command": {"topic": "plug/set"},
    "state": {"topic": "plug/state", "path": "relay", "on": [True], "off": [False]},
    "meter": {"topic": "plug/meter", "energy": {"path": "e", "unit": "kWh"}},
}
MODBUS = {"type": "modbus", "host": "10.0.0.5"}
OCPP = {"type": "ocpp", "charge_point_id": "RELAY-1"}
SIM = {"type": "simulator"}


class Link:
    def connected(self, cp_id: str) -> bool:
        return False

    def snapshot(self, cp_id: str, connector_id: int) -> RelaySnapshot | None:
        return None

    async def call(self, cp_id: str, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        return {}


@pytest.mark.parametrize(
    ("config", "cls"),
    [(SHELLY, MqttBreaker), (TASMOTA, MqttBreaker), (GENERIC, MqttBreaker),
     (MODBUS, ModbusBreaker), (OCPP, OcppRelayBreaker), (SIM, SimulatedBreaker)],
)
def test_build_each_type(config: dict[str, Any], cls: type) -> None:
    driver = build_driver(config, environ={}, ocpp_link=Link())
    assert isinstance(driver, cls)
    normal = validate_config(config)
    assert validate_config(normal) == normal  # normalised form is a fixed point
    assert normal["type"] == config["type"]


def test_normalised_values() -> None:
    normal = validate_config({**MODBUS, "energy": {"address": 10, "scale": 0.1, "words": 2}})
    assert normal["energy"]["scale"] == "0.1"  # decimal text, not a binary float
    assert normal["port"] == 502 and normal["relay_coil"] == 0
    assert validate_config(GENERIC)["state"][0]["topic"] == "plug/state"  # one -> list


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({**SHELLY, "port": 0}, "driver.port"),
        ({**SHELLY, "port": "x"}, "driver.port"),
        ({**SHELLY, "prefix": "a/+"}, "driver.prefix"),
        ({**SHELLY, "colour": "red"}, "driver.colour"),
        ({k: v for k, v in SHELLY.items() if k != "prefix"}, "driver.prefix"),
        ({**SHELLY, "preset": "shelly_gen1"}, "driver.preset"),
        ({**TASMOTA, "relay": 0}, "driver.relay"),
        ({**TASMOTA, "password_env": "lower-case-bad"}, "driver.password_env"),
        # another of the server's secrets must not be sent to an operator's broker
        ({**TASMOTA, "password_env": "CSMS_ADMIN_TOKEN"}, "driver.password_env"),
        ({**TASMOTA, "password_env": "STRIPE_API_KEY"}, "driver.password_env"),
        ({**GENERIC, "command": {"topic": "a/#"}}, "driver.command.topic"),
        ({**GENERIC, "state": [{"topic": "ok"}, {"topic": ""}]}, "driver.state.1.topic"),
        ({**GENERIC, "meter": {"topic": "m", "energy": {"unit": "W"}}}, "driver.meter.0.energy"),
        ({**GENERIC, "meter": {"topic": "m", "power": {"path": "a..b", "unit": "W"}}},
         "driver.meter.0.power.path"),
        ({**MODBUS, "energy": {"address": 1, "scale": "0"}}, "driver.energy.scale"),
        ({**MODBUS, "energy": {"address": 1, "words": 3}}, "driver.energy.words"),
        ({**MODBUS, "tripped": {"address": 1, "kind": "holding"}}, "driver.tripped.kind"),
        ({**MODBUS, "unit_id": 300}, "driver.unit_id"),
        ({**OCPP, "method": "relay"}, "driver.method"),
        ({**OCPP, "limit_a": "16.05"}, "driver.limit_a"),
        ({**OCPP, "ocpp_version": "2.1"}, "driver.ocpp_version"),
        ({**SIM, "power_w": -1}, "driver.power_w"),
        ({"type": "zigbee"}, "driver.type"),
        ({}, "driver.type"),
    ],
)
def test_errors_name_the_key(config: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        validate_config(config)
    assert err.value.key == key
    assert key.removeprefix("driver.") in str(err.value) or "driver" in str(err.value)


def test_not_a_mapping() -> None:
    with pytest.raises(ConfigError) as err:
        validate_config(["type", "mqtt"])  # type: ignore[arg-type]
    assert err.value.key == "driver"


def test_inline_password_refused() -> None:
    with pytest.raises(ConfigError) as err:
        validate_config({**SHELLY, "password": "hunter2"})
    assert err.value.key == "driver.password"
    assert "hunter2" not in str(err.value)
    assert "password_env" in str(err.value)


def test_password_from_environment() -> None:
    config = {**TASMOTA, "username": "csms", "password_env": "BREAKER_MQTT_PASSWORD"}
    with pytest.raises(ConfigError) as err:
        build_driver(config, environ={})
    assert err.value.key == "driver.password_env" and "BREAKER_MQTT_PASSWORD" in str(err.value)
    driver = build_driver(config, environ={"BREAKER_MQTT_PASSWORD": "s3cret"})
    assert isinstance(driver, MqttBreaker)
    assert driver._password == "s3cret"
    assert "s3cret" not in repr(validate_config(config))


def test_ocpp_needs_a_link() -> None:
    with pytest.raises(ConfigError) as err:
        build_driver(OCPP)
    assert err.value.key == "driver.type"


def test_decimal_scale_kept_exact() -> None:
    driver = build_driver({**MODBUS, "power": {"address": 2, "scale": 0.1}})
    assert isinstance(driver, ModbusBreaker)
    assert driver.settings.power is not None and driver.settings.power.scale == Decimal("0.1")
