"""Tables of the operator-side OCPP operations (csms.operations): what each operation leaves
behind, readable on the operator API.

* ``reservation`` - ReserveNow / CancelReservation (OCPP 1.6 §5.13 / §5.1, 2.0.1 H01-H04);
  ``id`` is the OCPP reservationId.
* ``local_list_version`` / ``local_list_entry`` - SendLocalList / GetLocalListVersion (1.6 §5.15
  / §5.10, 2.0.1 D01 / D02): the list we believe a charger holds, and its version.
* ``charging_profile_record`` - SetChargingProfile / ClearChargingProfile (1.6 §5.16 / §5.5,
  2.0.1 K01 / K10) and ReportChargingProfiles (2.0.1 K09).
* ``installed_certificate`` - InstallCertificate / GetInstalledCertificateIds /
  DeleteCertificate (1.6 security whitepaper, 2.0.1 M03-M05).
* ``firmware_job`` - UpdateFirmware / SignedUpdateFirmware / GetDiagnostics / GetLog and the
  status notifications that follow (1.6 §5.19 / §5.9, whitepaper; 2.0.1 L01 / N01), plus
  2.0.1 GetChargingProfiles report requests (K09: ``kind`` ``charging_profiles``).
* ``security_event`` - SecurityEventNotification (1.6 whitepaper, 2.0.1 A04).
* ``variable_monitor`` - SetVariableMonitoring results (2.0.1 N04).

Times are timezone-aware UTC.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, Index, Text
from sqlmodel import Field, SQLModel

from billing.sqltypes import UtcDateTime
from csms.models import utcnow


def _ts(nullable: bool = True) -> Any:
    return Field(default=None, sa_column=Column(UtcDateTime(), nullable=nullable))


class Reservation(SQLModel, table=True):
    """A reservation sent to a charger. ``status``: Requested (sent, no answer yet) | the
    charger's refusal (Faulted, Occupied, Rejected, Unavailable) | Failed (no answer) |
    Accepted -> Used (a transaction started with it) | Cancelled | Expired."""

    __tablename__ = "reservation"
    __table_args__ = (Index("ix_reservation_cp_status", "charge_point_id", "status"),)

    id: int | None = Field(default=None, primary_key=True)
    charge_point_id: str = Field(max_length=255)
    connector_id: int = 0
    """1.6 connectorId / 2.0.1 evseId; 0 = any connector of the charger."""
    id_tag: str = Field(max_length=255)
    parent_id_tag: str | None = Field(default=None, max_length=255)
    expiry_date: datetime = Field(sa_column=Column(UtcDateTime(), nullable=False))
    status: str = Field(default="Requested", max_length=32)
    transaction_pk: int | None = None
    created_at: datetime = Field(default_factory=utcnow, sa_column=Column(UtcDateTime()))
    updated_at: datetime = Field(default_factory=utcnow, sa_column=Column(UtcDateTime()))


class LocalListVersion(SQLModel, table=True):
    """The local authorisation list of one charger: ``version`` is the last version it
    accepted, ``last_sent_version`` the highest one sent (versions only go up),
    ``reported_version`` what it last answered to GetLocalListVersion."""

    __tablename__ = "local_list_version"

    charge_point_id: str = Field(primary_key=True, max_length=255)
    version: int = 0
    last_sent_version: int = 0
    last_update_type: str | None = Field(default=None, max_length=16)
    last_status: str | None = Field(default=None, max_length=32)
    reported_version: int | None = None
    reported_at: datetime | None = _ts()
    updated_at: datetime = Field(default_factory=utcnow, sa_column=Column(UtcDateTime()))


class LocalListEntry(SQLModel, table=True):
    """One idTag of a charger's local list (as accepted by the charger)."""

    __tablename__ = "local_list_entry"

    charge_point_id: str = Field(primary_key=True, max_length=255)
    id_tag: str = Field(primary_key=True, max_length=255)
    status: str = Field(default="Accepted", max_length=32)
    expiry_date: datetime | None = _ts()
    parent_id_tag: str | None = Field(default=None, max_length=255)
    source: str = Field(default="operator", max_length=16)
    """operator (an IdTag row) | driver (a DriverTag row) | removed is never stored."""
    version: int = 0


class ChargingProfileRecord(SQLModel, table=True):
    """A charging profile sent to (or reported by) a charger. ``status``: the charger's answer
    (Accepted, Rejected, NotSupported) or ``Reported``; ``cleared_at`` is set when a
    ClearChargingProfile (or a replacing profile) removed it. Installed = Accepted/Reported and
    not cleared."""

    __tablename__ = "charging_profile_record"
    __table_args__ = (Index("ix_charging_profile_cp", "charge_point_id", "profile_id"),)

    id: int | None = Field(default=None, primary_key=True)
    charge_point_id: str = Field(max_length=255)
    profile_id: int
    connector_id: int = 0
    """1.6 connectorId / 2.0.1 evseId (0 = the whole charger)."""
    purpose: str = Field(max_length=40)
    stack_level: int = 0
    transaction_id: str | None = Field(default=None, max_length=64)
    profile: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    """The profile exactly as sent (1.6 csChargingProfiles / 2.0.1 chargingProfile)."""
    status: str = Field(default="Requested", max_length=32)
    source: str = Field(default="operator", max_length=16)
    """operator | remote_start | reported"""
    cleared_at: datetime | None = _ts()
    created_at: datetime = Field(default_factory=utcnow, sa_column=Column(UtcDateTime()))
    updated_at: datetime = Field(default_factory=utcnow, sa_column=Column(UtcDateTime()))


class InstalledCertificate(SQLModel, table=True):
    """A certificate on a charger. ``status``: Installed | Rejected / Failed (the charger's
    answer to InstallCertificate) | Deleted | Missing (not in the charger's last list).
    Hash data (``CertificateHashDataType``, hex) identifies it for DeleteCertificate."""

    __tablename__ = "installed_certificate"
    __table_args__ = (Index("ix_installed_certificate_cp", "charge_point_id", "status"),)

    id: int | None = Field(default=None, primary_key=True)
    charge_point_id: str = Field(max_length=255)
    certificate_type: str = Field(max_length=64)
    certificate: str | None = Field(default=None, sa_column=Column(Text))
    """PEM, when we installed it."""
    hash_algorithm: str | None = Field(default=None, max_length=8)
    issuer_name_hash: str | None = Field(default=None, max_length=128)
    issuer_key_hash: str | None = Field(default=None, max_length=128)
    serial_number: str | None = Field(default=None, max_length=40)
    status: str = Field(default="Requested", max_length=16)
    source: str = Field(default="operator", max_length=16)
    """operator (InstallCertificate) | reported (GetInstalledCertificateIds)"""
    created_at: datetime = Field(default_factory=utcnow, sa_column=Column(UtcDateTime()))
    updated_at: datetime = Field(default_factory=utcnow, sa_column=Column(UtcDateTime()))


class FirmwareJob(SQLModel, table=True):
    """A firmware update, diagnostics or log upload (or a 2.0.1 profile report) and the status
    notifications that followed. ``kind``: firmware | signed_firmware | diagnostics | log |
    charging_profiles. ``request_id`` is the OCPP requestId where the message has one (our
    ``id``). ``status``: the answer (Accepted, Rejected, ...), then the last notified status;
    ``history``: ``[{"status", "at", "source": "answer"|"notification", ...}]`` (an answer
    that failed has ``error``). ``finished``: the last status is terminal
    (``csms.operations.TERMINAL_STATUSES``), since ``finished_at``."""

    __tablename__ = "firmware_job"
    __table_args__ = (Index("ix_firmware_job_cp_kind", "charge_point_id", "kind"),)

    id: int | None = Field(default=None, primary_key=True)
    charge_point_id: str = Field(max_length=255)
    kind: str = Field(max_length=24)
    action: str = Field(max_length=40)
    request_id: int | None = None
    request: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    response: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    status: str = Field(default="Requested", max_length=40)
    history: list[Any] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    finished: bool = False
    finished_at: datetime | None = _ts()
    created_at: datetime = Field(default_factory=utcnow, sa_column=Column(UtcDateTime()))
    updated_at: datetime = Field(default_factory=utcnow, sa_column=Column(UtcDateTime()))


class SecurityEvent(SQLModel, table=True):
    """A SecurityEventNotification (1.6 whitepaper / 2.0.1 A04) as received."""

    __tablename__ = "security_event"
    __table_args__ = (Index("ix_security_event_cp", "charge_point_id", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    charge_point_id: str = Field(max_length=255)
    type: str = Field(max_length=64)
    timestamp: datetime | None = _ts()
    timestamp_raw: str | None = Field(default=None, max_length=64)
    tech_info: str | None = Field(default=None, sa_column=Column(Text))
    received_at: datetime = Field(default_factory=utcnow, sa_column=Column(UtcDateTime()))


class VariableMonitor(SQLModel, table=True):
    """One SetVariableMonitoring entry (2.0.1 N04) and the station's answer (``status``:
    Accepted, UnknownComponent, UnknownVariable, UnsupportedMonitorType, Rejected,
    Duplicate); ``monitor_id`` is the station's id when it accepted."""

    __tablename__ = "variable_monitor"
    __table_args__ = (Index("ix_variable_monitor_cp", "charge_point_id"),)

    id: int | None = Field(default=None, primary_key=True)
    charge_point_id: str = Field(max_length=255)
    monitor_id: int | None = None
    component: str = Field(max_length=50)
    variable: str = Field(max_length=50)
    evse_id: int | None = None
    type: str = Field(max_length=24)
    value: float
    severity: int
    status: str = Field(default="Requested", max_length=32)
    created_at: datetime = Field(default_factory=utcnow, sa_column=Column(UtcDateTime()))
