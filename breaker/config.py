"""Driver configuration: validate a JSON-like mapping and build the driver it describes.

``type`` selects the driver; every other key is checked by the driver's pydantic model (unknown
keys are refused). Errors raise :class:`~breaker.driver.ConfigError` whose ``key`` is the dotted
path of the offending field under ``driver`` (``"driver.port"``, ``"driver.energy.scale"``,
``"driver.state.0.topic"``).

=============  =====================================================================
``type``       model (keys and defaults)
=============  =====================================================================
``mqtt``       ``preset`` ``shelly_gen2`` :class:`breaker.mqtt.ShellyGen2Settings`,
               ``tasmota`` :class:`breaker.mqtt.TasmotaSettings`,
               ``generic`` :class:`breaker.mqtt.GenericMqttSettings`
``modbus``     :class:`breaker.modbus.ModbusSettings`
``ocpp``       :class:`breaker.ocpp_relay.OcppRelaySettings` (needs an ``ocpp_link``)
``simulator``  :class:`breaker.simulated.SimulatorSettings`
=============  =====================================================================

Secrets: a broker password is never part of a configuration. ``password_env`` names the
environment variable that holds it; ``build_driver`` reads it (missing -> ConfigError naming
``driver.password_env``). See docs/breakers.md for examples.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from breaker.driver import BreakerDriver, ConfigError
from breaker.modbus import ModbusBreaker, ModbusSettings
from breaker.mqtt import (
    GenericMqttSettings,
    MqttBreaker,
    ShellyGen2Settings,
    TasmotaSettings,
)
from breaker.ocpp_relay import OcppLink, OcppRelayBreaker, OcppRelaySettings
from breaker.simulated import SimulatedBreaker, SimulatorSettings

DRIVER_TYPES: dict[str, type[BaseModel]] = {
    "modbus": ModbusSettings,
    "ocpp": OcppRelaySettings,
    "simulator": SimulatorSettings,
}
MQTT_PRESETS: dict[str, type[BaseModel]] = {
    "shelly_gen2": ShellyGen2Settings,
    "tasmota": TasmotaSettings,
    "generic": GenericMqttSettings,
}
_SECRET_KEYS = ("password", "secret", "token")


def _key(loc: tuple[int | str, ...]) -> str:
    return ".".join(["driver", *(str(part) for part in loc)])


def parse_config(config: Mapping[str, Any]) -> BaseModel:
    """The validated settings model for ``config``.

    Raises:
        ConfigError: not a mapping, unknown ``type``/``preset``, an inline password, or any
            invalid / unknown key (``key`` names it).
    """
    if not isinstance(config, Mapping):
        raise ConfigError("the driver configuration must be a JSON object", key="driver")
    for secret in _SECRET_KEYS:
        if secret in config:
            raise ConfigError(
                f"{secret!r} is not accepted inline: put it in an environment variable and "
                "name that variable in 'password_env'",
                key=f"driver.{secret}",
            )
    kind = config.get("type")
    if kind == "mqtt":
        preset = config.get("preset")
        model = MQTT_PRESETS.get(preset) if isinstance(preset, str) else None
        if model is None:
            raise ConfigError(
                f"unknown MQTT preset {preset!r} (one of {', '.join(MQTT_PRESETS)})",
                key="driver.preset",
            )
    else:
        model = DRIVER_TYPES.get(kind) if isinstance(kind, str) else None
        if model is None:
            kinds = ", ".join(["mqtt", *DRIVER_TYPES])
            raise ConfigError(f"unknown driver type {kind!r} (one of {kinds})", key="driver.type")
    try:
        return model.model_validate(dict(config))
    except ValidationError as exc:
        errors = exc.errors()
        first = errors[0]
        key = _key(tuple(first["loc"]))
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ConfigError(f"{key}: {first['msg']}{more}", key=key) from None


def validate_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A normalised copy of ``config``: defaults filled in, JSON types (decimals as strings),
    one-or-many fields as lists. Validating the result again gives the same result.

    Raises:
        ConfigError: see :func:`parse_config`.
    """
    return parse_config(config).model_dump(mode="json")


def build_driver(
    config: Mapping[str, Any],
    *,
    environ: Mapping[str, str] | None = None,
    ocpp_link: OcppLink | None = None,
) -> BreakerDriver:
    """The driver ``config`` describes (not yet connected: call ``connect()``).

    Args:
        config: the driver configuration (see the module docstring).
        environ: where ``password_env`` is looked up (default :data:`os.environ`).
        ocpp_link: the CSMS link an ``ocpp`` driver needs.

    Raises:
        ConfigError: invalid configuration, ``password_env`` not set in ``environ``
            (``key="driver.password_env"``), or an ``ocpp`` driver without ``ocpp_link``
            (``key="driver.type"``).
    """
    settings = parse_config(config)
    env = os.environ if environ is None else environ
    if isinstance(settings, ShellyGen2Settings | TasmotaSettings | GenericMqttSettings):
        password = None
        if settings.password_env is not None:
            password = env.get(settings.password_env)
            if password is None:
                raise ConfigError(
                    f"environment variable {settings.password_env} (password_env) is not set",
                    key="driver.password_env",
                )
        return MqttBreaker(settings, password=password)
    if isinstance(settings, ModbusSettings):
        return ModbusBreaker(settings)
    if isinstance(settings, OcppRelaySettings):
        if ocpp_link is None:
            raise ConfigError("an OCPP relay driver needs the CSMS's OCPP link", key="driver.type")
        return OcppRelayBreaker(settings, ocpp_link)
    assert isinstance(settings, SimulatorSettings)
    return SimulatedBreaker(settings)
