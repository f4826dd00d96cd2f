"""Settings, read once at start from environment variables (and optionally a TOML file).

Every setting is an environment variable ``CSMS_<NAME>``; an unknown ``CSMS_`` variable is an
error (Stripe's are ``STRIPE_API_KEY`` and
``STRIPE_WEBHOOK_SECRET``, as Stripe's own tools name them). ``CSMS_CONFIG_FILE`` may name a TOML
file whose top-level keys are the lower-case setting names without the prefix; environment
variables win over the file.

A bad value stops the start with :class:`ConfigError`, whose message names the setting, e.g.
``CSMS_OCPP_PORT: Input should be a valid integer``.
"""

from __future__ import annotations

import os
import tomllib
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(Exception):
    """A setting has a bad value; the message starts with the setting's environment name."""


def _default_database_url() -> str:
    return "sqlite+aiosqlite:///" + str(Path("var") / "csms.db")


class Settings(BaseModel):
    """The whole configuration of one server process.

    Units: ports are TCP ports, times are seconds, sizes are bytes, amounts are integer minor
    units of the currency.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    database_url: str = Field(default_factory=_default_database_url)
    database_echo: bool = False

    ocpp_host: str = "0.0.0.0"
    ocpp_port: int = Field(default=9000, ge=0, le=65535)
    api_host: str = "0.0.0.0"
    api_port: int = Field(default=8080, ge=0, le=65535)

    admin_token: str | None = None
    """Bootstrap operator token (Bearer). Without it, only tokens created through the API work."""

    # TLS for the OCPP endpoint (security profiles 2 and 3).
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_ca_file: Path | None = None
    """CA bundle that signs charger client certificates (security profile 3)."""

    auto_register: bool = False
    """Accept unknown charge point ids (registered on first connect, profile 0). Off by default."""

    ocpp_max_frame_bytes: int = Field(default=16 * 1024 * 1024, ge=4096)
    ocpp_ping_interval: float | None = Field(default=60.0, gt=0)
    ocpp_ping_timeout: float | None = Field(default=30.0, gt=0)
    heartbeat_interval: int = Field(default=300, ge=1)
    """Heartbeat interval (seconds) sent in the BootNotification response."""
    ocpp201_provision_on_boot: bool = False
    """OCPP 2.0.1 B02: answer a station whose device model is unknown ``Pending`` and fetch it
    (GetBaseReport) before accepting it."""
    ocpp201_pending_interval: int = Field(default=10, ge=1)
    """Seconds before a Pending station boots again (B02)."""
    command_timeout: float = Field(default=30.0, gt=0)
    """How long a CSMS-initiated call waits for the charger's answer (seconds)."""
    clock_skew_tolerance: int = Field(default=600, ge=0)
    """A charger time more than this many seconds ahead of the server is untrusted."""
    last_seen_flush_interval: float = Field(default=5.0, gt=0)

    stripe_api_key: str | None = None
    """``STRIPE_API_KEY``. Without it the server starts the embedded Stripe emulator (no real
    money moves)."""
    stripe_webhook_secret: str | None = None
    """``STRIPE_WEBHOOK_SECRET``: the signing secret of the webhook endpoint."""
    stripe_api_base: str | None = None
    """``CSMS_STRIPE_API_BASE``: Stripe API address (an emulator in tests)."""

    stripe_timeout: float = Field(default=20.0, gt=0)
    """Seconds per Stripe request."""
    stripe_emulator_data: Path | None = Path("var") / "stripe-emulator.pickle"
    """Where the embedded emulator keeps its objects (only without STRIPE_API_KEY)."""

    default_tariff_currency: str = Field(default="JPY", pattern=r"^[A-Z]{3}$")
    """Currency of the ``default`` tariff created on a fresh install."""
    default_tariff_energy_price: Decimal = Field(default=Decimal("40"), ge=0)
    """Price per kWh of the ``default`` tariff, major units (¥40/kWh)."""
    default_tariff_hold_amount: int = Field(default=3000, ge=1)
    """Hold of the ``default`` tariff, minor units (¥3,000)."""
    topup_policy: Literal["none", "topup"] = "none"
    """none: a driver never pays more than the hold (the session is stopped when the running
    cost reaches it; any overshoot is not collected). topup: keep charging past the hold and
    charge the rest off-session at the end."""
    settle_below_minimum: Literal["waive", "round_up"] = "waive"
    """A cost below Stripe's minimum charge: cancel the hold, or collect the minimum."""
    session_start_timeout: float = Field(default=120.0, gt=0)
    """Seconds a paid session waits for the charger's StartTransaction before failing."""
    breaker_poll_interval: float = Field(default=1.0, gt=0, le=3600)
    """Seconds between two reads of each breaker (state and meter; docs/breakers.md)."""
    breaker_confirm_timeout: float = Field(default=5.0, gt=0, le=600)
    """Seconds a breaker close/open waits to be confirmed by reading the state back."""
    breaker_attempts: int = Field(default=3, ge=1, le=10)
    """Commands sent (the first + retries) before a close/open is reported unconfirmed."""
    load_interval: float = Field(default=1.0, gt=0, le=3600)
    """Seconds between two load-management passes over each site (measured current against
    the limit; profiles re-pushed where they changed; docs/load-management.md). A session
    start or stop, or a measured overshoot, triggers a pass at once."""
    load_push_timeout: float = Field(default=5.0, gt=0, le=300)
    """Seconds load management waits for a charger to answer a SetChargingProfile."""

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("tls_cert_file", "tls_key_file", "tls_ca_file")
    @classmethod
    def _file_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"file not found: {value}")
        return value

    @field_validator("database_url")
    @classmethod
    def _known_driver(cls, value: str) -> str:
        if not value.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise ValueError("must start with sqlite+aiosqlite:// or postgresql+asyncpg://")
        return value

    @model_validator(mode="after")
    def _tls_pair(self) -> Settings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("CSMS_TLS_CERT_FILE and CSMS_TLS_KEY_FILE must be set together")
        if self.tls_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("CSMS_TLS_CA_FILE needs CSMS_TLS_CERT_FILE and CSMS_TLS_KEY_FILE")
        return self

    @property
    def tls_enabled(self) -> bool:
        """True when the OCPP endpoint serves wss:// (profiles 2 and 3)."""
        return self.tls_cert_file is not None


def load_settings(environ: dict[str, str] | None = None, **overrides: Any) -> Settings:
    """Read and validate the settings once.

    Args:
        environ: the environment to read (default ``os.environ``).
        overrides: values that win over everything (used by tests and the CLI).

    Raises:
        ConfigError: a value is invalid; the message names the setting (``CSMS_...``).
    """
    env = dict(os.environ if environ is None else environ)
    values: dict[str, Any] = {}
    config_file = env.get("CSMS_CONFIG_FILE")
    if config_file:
        try:
            with open(config_file, "rb") as fh:
                values.update(tomllib.load(fh))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"CSMS_CONFIG_FILE: cannot read {config_file}: {exc}") from exc
    prefix = "CSMS_"
    for key, raw in env.items():
        if key.startswith(prefix) and key != "CSMS_CONFIG_FILE":
            values[key[len(prefix) :].lower()] = raw
    for key in ("STRIPE_API_KEY", "STRIPE_WEBHOOK_SECRET"):
        if env.get(key):
            values[key.lower()] = env[key]
    values.update(overrides)
    unknown = sorted(set(values) - set(Settings.model_fields))
    if unknown:
        raise ConfigError(f"{_env_name(unknown[0])}: unknown setting")
    try:
        # Pass values explicitly so the file and the environment share one validation path.
        return Settings.model_validate(values)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = first.get("loc") or ()
        name = _env_name(str(loc[0])) if loc else "CSMS settings"
        raise ConfigError(f"{name}: {first.get('msg')}") from None


def _env_name(field: str) -> str:
    return (
        field.upper()
        if field.startswith("stripe_api_key") or field == "stripe_webhook_secret"
        else f"CSMS_{field.upper()}"
    )
