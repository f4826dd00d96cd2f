"""Operator routes of the OCPP operations with stored results (csms.operations): reservations,
local list, charging profiles, composite schedule, firmware / diagnostics / log jobs,
certificates, security events, variable monitors. Operators only (a driver's token gets 403).

Everything else a charger accepts (ClearCache, UnlockConnector, Reset, ChangeAvailability,
Get/ChangeConfiguration, DataTransfer, TriggerMessage, ExtendedTriggerMessage) goes through the
generic ``POST /api/v1/charge-points/{id}/commands/{Action}``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from aiohttp import web
from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
)

from api.app import CTX, json_response, read_body, require_operator
from csms.errors import InvalidRequest, Unavailable
from csms.operations import MAX_CONNECTOR_ID, JobKind, OperationsService, records_json

routes = web.RouteTableDef()

BASE = "/api/v1/charge-points/{id}"


def _ops(request: web.Request) -> OperationsService:
    require_operator(request)
    ops = request.app[CTX].operations
    if ops is None:
        raise Unavailable("operations are not running")
    return ops


def _int_path(request: web.Request, name: str) -> int:
    try:
        value = int(request.match_info[name])
    except ValueError:
        raise InvalidRequest(f"{name} must be an integer", field=name) from None
    if not 0 <= value < 2**31:
        raise InvalidRequest(f"{name} is out of range", field=name)
    return value


def _query(request: web.Request, model: type[BaseModel]) -> Any:
    """Validate the query string with ``model``; 400 naming the first bad parameter."""
    try:
        return model.model_validate(dict(request.query))
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err.get("loc", ())) or "query"
        raise InvalidRequest(f"{field}: {err.get('msg')}", field=field) from None


# -- bodies ---------------------------------------------------------------------------------
# Bodies are strict (no "16" for 16, no "yes" for true: a 400 naming the field); date-times
# are ISO 8601 strings with a time zone.

BODY = ConfigDict(extra="forbid", strict=True)


def _iso_text(value: Any) -> Any:
    if not isinstance(value, str):
        raise ValueError("must be an ISO 8601 date-time string with a time zone")
    return value


IsoDatetime = Annotated[AwareDatetime, Strict(False), BeforeValidator(_iso_text)]
"""An ISO 8601 date-time with a time zone, given as a string (a strict body would refuse
the string; a lax one would take a number of seconds)."""


class ReservationIn(BaseModel):
    """POST .../reservations: reserve ``connector_id`` (0 = any, 1.6 §5.13 / 2.0.1 evseId)
    for ``id_tag`` until ``expiry_date``; ``parent_id_tag`` defaults to the tag's parent."""

    model_config = BODY
    connector_id: int = Field(default=0, ge=0, le=MAX_CONNECTOR_ID)
    """At most the highest connector the charger reported (400 otherwise)."""
    id_tag: str = Field(min_length=1, max_length=36)
    expiry_date: IsoDatetime
    """In the future (400 otherwise)."""
    parent_id_tag: str | None = Field(default=None, min_length=1, max_length=36)


class LocalListIn(BaseModel):
    """POST .../local-list: Full (all tags, or only ``tags``) or Differential (``tags``: known
    ones added/updated, unknown ones removed)."""

    model_config = BODY
    update_type: Literal["Full", "Differential"]
    tags: list[str] | None = Field(default=None, max_length=10000)


class ChargingProfileIn(BaseModel):
    """POST .../charging-profiles: ``profile`` in the charger's version's shape (1.6
    csChargingProfiles, 2.0.1 chargingProfile), checked against the OCPP schema."""

    model_config = BODY
    connector_id: int = Field(ge=0, lt=2**31)
    profile: dict[str, Any]


class RemoteStartIn(BaseModel):
    """POST .../charging-profiles/remote-start: RemoteStartTransaction with a TxProfile."""

    model_config = BODY
    connector_id: int = Field(ge=1, lt=2**31)
    id_tag: str = Field(min_length=1, max_length=36)
    profile: dict[str, Any]


class ClearProfilesQuery(BaseModel):
    """DELETE .../charging-profiles?profile_id=&connector_id=&purpose=&stack_level= (none:
    every profile)."""

    model_config = ConfigDict(extra="forbid")
    profile_id: int | None = Field(default=None, ge=0, lt=2**31)
    connector_id: int | None = Field(default=None, ge=0, lt=2**31)
    purpose: Literal["ChargePointMaxProfile", "TxDefaultProfile", "TxProfile",
                     "ChargingStationMaxProfile", "ChargingStationExternalConstraints",
                     ] | None = None
    stack_level: int | None = Field(default=None, ge=0, lt=2**31)


class ProfilesReportIn(BaseModel):
    """POST .../charging-profiles/report (2.0.1 GetChargingProfiles): a
    ChargingProfileCriterionType and an optional EVSE."""

    model_config = BODY
    evse_id: int | None = Field(default=None, ge=0, lt=2**31)
    criteria: dict[str, Any] = Field(default_factory=dict)


class CompositeQuery(BaseModel):
    """GET .../composite-schedule?connector_id=&duration=&unit= (duration in seconds)."""

    model_config = ConfigDict(extra="forbid")
    connector_id: int = Field(ge=0, lt=2**31)
    duration: int = Field(ge=1, le=7 * 86400)
    unit: Literal["A", "W"] | None = None


class JobsQuery(BaseModel):
    """GET .../jobs?kind= (none: every kind)."""

    model_config = ConfigDict(extra="forbid")
    kind: JobKind | None = None


class SecurityEventsQuery(BaseModel):
    """GET .../security-events?limit= (newest first, default 100)."""

    model_config = ConfigDict(extra="forbid")
    limit: int = Field(default=100, ge=1, le=1000)


class FirmwareIn(BaseModel):
    """POST .../firmware: 1.6 UpdateFirmware (or SignedUpdateFirmware with a signing
    certificate and signature), 2.0.1 UpdateFirmware. Retry interval in seconds."""

    model_config = BODY
    location: str = Field(min_length=1, max_length=512)
    retrieve_date: IsoDatetime
    install_date: IsoDatetime | None = None
    retries: int | None = Field(default=None, ge=0, le=100)
    retry_interval: int | None = Field(default=None, ge=0, le=86400)
    signing_certificate: str | None = Field(default=None, min_length=1, max_length=5500)
    signature: str | None = Field(default=None, min_length=1, max_length=800)


class DiagnosticsIn(BaseModel):
    """POST .../diagnostics (1.6 GetDiagnostics; 2.0.1 GetLog DiagnosticsLog)."""

    model_config = BODY
    location: str = Field(min_length=1, max_length=512)
    start_time: IsoDatetime | None = None
    stop_time: IsoDatetime | None = None
    retries: int | None = Field(default=None, ge=0, le=100)
    retry_interval: int | None = Field(default=None, ge=0, le=86400)


class LogIn(BaseModel):
    """POST .../logs (GetLog, 1.6 whitepaper / 2.0.1 N01)."""

    model_config = BODY
    log_type: Literal["DiagnosticsLog", "SecurityLog"]
    location: str = Field(min_length=1, max_length=512)
    oldest: IsoDatetime | None = None
    latest: IsoDatetime | None = None
    retries: int | None = Field(default=None, ge=0, le=100)
    retry_interval: int | None = Field(default=None, ge=0, le=86400)


class CertificateIn(BaseModel):
    """POST .../certificates: InstallCertificate (PEM)."""

    model_config = BODY
    certificate_type: Literal["CentralSystemRootCertificate", "ManufacturerRootCertificate",
                              "CSMSRootCertificate", "V2GRootCertificate",
                              "MORootCertificate"]
    certificate: str = Field(min_length=1, max_length=5500)


class CertificateQueryIn(BaseModel):
    """POST .../certificates/query: GetInstalledCertificateIds for these types (none: all)."""

    model_config = BODY
    certificate_types: list[str] = Field(default_factory=list, max_length=10)


class MonitorIn(BaseModel):
    """One monitor (2.0.1 SetMonitoringDataType in our names)."""

    model_config = BODY
    component: str = Field(min_length=1, max_length=50)
    variable: str = Field(min_length=1, max_length=50)
    evse_id: int | None = Field(default=None, ge=0, lt=2**31)
    type: Literal["UpperThreshold", "LowerThreshold", "Delta", "Periodic", "PeriodicClockAligned"]
    value: float
    severity: int = Field(ge=0, le=9)


class MonitorsIn(BaseModel):
    """POST .../monitors: 2.0.1 SetVariableMonitoring."""

    model_config = BODY
    monitors: list[MonitorIn] = Field(min_length=1, max_length=100)


# -- reservations ---------------------------------------------------------------------------


@routes.post(BASE + "/reservations")
async def post_reservation(request: web.Request) -> web.Response:
    """Reserve a connector (ReserveNow); the reservation with the charger's answer."""
    ops = _ops(request)
    body: ReservationIn = await read_body(request, ReservationIn)
    row = await ops.reserve_now(request.match_info["id"], body.connector_id, body.id_tag,
                                body.expiry_date, body.parent_id_tag)
    return json_response(row.model_dump(), 201)


@routes.get(BASE + "/reservations")
async def get_reservations(request: web.Request) -> web.Response:
    """A charger's reservations with their state, newest first."""
    rows = await _ops(request).reservations(request.match_info["id"])
    return json_response({"items": records_json(rows)})


@routes.post(BASE + "/reservations/{rid}/cancel")
async def cancel_reservation(request: web.Request) -> web.Response:
    """CancelReservation; Accepted -> Cancelled. 409 when the reservation is not open (used,
    cancelled, expired or refused)."""
    ops = _ops(request)
    status, row = await ops.cancel_reservation(request.match_info["id"],
                                               _int_path(request, "rid"))
    return json_response({"status": status, "reservation": row.model_dump()})


# -- local list -----------------------------------------------------------------------------


def _local_list_json(version: Any, entries: list[Any]) -> dict[str, Any]:
    head = version.model_dump(exclude={"charge_point_id"}) if version is not None else {
        "version": 0, "last_sent_version": 0, "last_update_type": None, "last_status": None,
        "reported_version": None, "reported_at": None, "updated_at": None}
    return {**head, "entries": records_json(entries, {"charge_point_id"})}


@routes.post(BASE + "/local-list")
async def post_local_list(request: web.Request) -> web.Response:
    """SendLocalList (Full / Differential) from operator tags and drivers' cards."""
    ops = _ops(request)
    body: LocalListIn = await read_body(request, LocalListIn)
    cp_id = request.match_info["id"]
    status, _ = await ops.send_local_list(cp_id, body.update_type, body.tags)
    version, entries = await ops.local_list(cp_id)
    return json_response({"status": status, **_local_list_json(version, entries)})


@routes.get(BASE + "/local-list")
async def get_local_list(request: web.Request) -> web.Response:
    """The local list a charger holds (as accepted) and its version."""
    version, entries = await _ops(request).local_list(request.match_info["id"])
    return json_response(_local_list_json(version, entries))


@routes.post(BASE + "/local-list/version")
async def post_local_list_version(request: web.Request) -> web.Response:
    """GetLocalListVersion: ask the charger (stored as reported_version)."""
    number = await _ops(request).get_local_list_version(request.match_info["id"])
    return json_response({"reported_version": number})


# -- smart charging -------------------------------------------------------------------------


@routes.post(BASE + "/charging-profiles")
async def post_charging_profile(request: web.Request) -> web.Response:
    """SetChargingProfile; the stored record with the charger's answer."""
    ops = _ops(request)
    body: ChargingProfileIn = await read_body(request, ChargingProfileIn)
    row = await ops.set_charging_profile(request.match_info["id"], body.connector_id,
                                         body.profile)
    return json_response(row.model_dump(), 201)


@routes.get(BASE + "/charging-profiles")
async def get_charging_profiles(request: web.Request) -> web.Response:
    """Installed profiles (``?all=true``: every profile sent, cleared ones included)."""
    rows = await _ops(request).charging_profiles(
        request.match_info["id"], request.query.get("all") == "true")
    return json_response({"items": records_json(rows)})


@routes.delete(BASE + "/charging-profiles")
async def delete_charging_profiles(request: web.Request) -> web.Response:
    """ClearChargingProfile by id and/or criteria (query parameters)."""
    ops = _ops(request)
    q: ClearProfilesQuery = _query(request, ClearProfilesQuery)
    status, cleared = await ops.clear_charging_profile(
        request.match_info["id"], q.profile_id, q.connector_id, q.purpose, q.stack_level)
    return json_response({"status": status, "cleared": cleared})


@routes.post(BASE + "/charging-profiles/remote-start")
async def post_remote_start_with_profile(request: web.Request) -> web.Response:
    """RemoteStartTransaction / RequestStartTransaction with a charging profile."""
    ops = _ops(request)
    body: RemoteStartIn = await read_body(request, RemoteStartIn)
    status = await ops.remote_start_with_profile(request.match_info["id"], body.connector_id,
                                                 body.id_tag, body.profile)
    return json_response({"status": status})


@routes.post(BASE + "/charging-profiles/report")
async def post_profiles_report(request: web.Request) -> web.Response:
    """2.0.1 GetChargingProfiles: a job that the station's ReportChargingProfiles fill."""
    ops = _ops(request)
    body: ProfilesReportIn = await read_body(request, ProfilesReportIn)
    job = await ops.get_charging_profiles(request.match_info["id"], body.criteria, body.evse_id)
    return json_response(job.model_dump(), 201)


@routes.get(BASE + "/composite-schedule")
async def get_composite_schedule(request: web.Request) -> web.Response:
    """GetCompositeSchedule: the charger's answer."""
    ops = _ops(request)
    q: CompositeQuery = _query(request, CompositeQuery)
    answer = await ops.get_composite_schedule(request.match_info["id"], q.connector_id,
                                              q.duration, q.unit)
    return json_response(answer)


# -- firmware, diagnostics, logs ------------------------------------------------------------


@routes.post(BASE + "/firmware")
async def post_firmware(request: web.Request) -> web.Response:
    """UpdateFirmware / SignedUpdateFirmware: a job that follows the status notifications."""
    ops = _ops(request)
    b: FirmwareIn = await read_body(request, FirmwareIn)
    job = await ops.update_firmware(request.match_info["id"], b.location, b.retrieve_date,
                                    b.install_date, b.retries, b.retry_interval,
                                    b.signing_certificate, b.signature)
    return json_response(job.model_dump(), 201)


@routes.post(BASE + "/diagnostics")
async def post_diagnostics(request: web.Request) -> web.Response:
    """GetDiagnostics (2.0.1: GetLog DiagnosticsLog): a job."""
    ops = _ops(request)
    b: DiagnosticsIn = await read_body(request, DiagnosticsIn)
    job = await ops.get_diagnostics(request.match_info["id"], b.location, b.start_time,
                                    b.stop_time, b.retries, b.retry_interval)
    return json_response(job.model_dump(), 201)


@routes.post(BASE + "/logs")
async def post_log(request: web.Request) -> web.Response:
    """GetLog (DiagnosticsLog / SecurityLog): a job."""
    ops = _ops(request)
    b: LogIn = await read_body(request, LogIn)
    job = await ops.get_log(request.match_info["id"], b.log_type, b.location, b.oldest,
                            b.latest, b.retries, b.retry_interval)
    return json_response(job.model_dump(), 201)


@routes.get(BASE + "/jobs")
async def get_jobs(request: web.Request) -> web.Response:
    """Firmware / diagnostics / log / report jobs with their status history (``?kind=``;
    400 naming ``kind`` for an unknown one)."""
    ops = _ops(request)
    q: JobsQuery = _query(request, JobsQuery)
    rows = await ops.jobs(request.match_info["id"], q.kind)
    return json_response({"items": records_json(rows)})


# -- certificates, security events, monitors ------------------------------------------------


@routes.post(BASE + "/certificates")
async def post_certificate(request: web.Request) -> web.Response:
    """InstallCertificate; the stored record (Installed, or the charger's refusal)."""
    ops = _ops(request)
    b: CertificateIn = await read_body(request, CertificateIn)
    row = await ops.install_certificate(request.match_info["id"], b.certificate_type,
                                        b.certificate)
    return json_response(row.model_dump(), 201)


@routes.get(BASE + "/certificates")
async def get_certificates(request: web.Request) -> web.Response:
    """Stored certificate records (every status)."""
    rows = await _ops(request).certificates(request.match_info["id"])
    return json_response({"items": records_json(rows)})


@routes.post(BASE + "/certificates/query")
async def post_certificate_query(request: web.Request) -> web.Response:
    """GetInstalledCertificateIds: the charger's list, stored."""
    ops = _ops(request)
    b: CertificateQueryIn = await read_body(request, CertificateQueryIn)
    status, rows = await ops.get_installed_certificate_ids(request.match_info["id"],
                                                           b.certificate_types)
    return json_response({"status": status, "items": records_json(rows)})


@routes.delete(BASE + "/certificates/{cert_id}")
async def delete_certificate(request: web.Request) -> web.Response:
    """DeleteCertificate by the stored hash data."""
    ops = _ops(request)
    status, row = await ops.delete_certificate(request.match_info["id"],
                                               _int_path(request, "cert_id"))
    return json_response({"status": status, "certificate": row.model_dump()})


@routes.get(BASE + "/security-events")
async def get_security_events(request: web.Request) -> web.Response:
    """SecurityEventNotifications, newest first (``?limit=`` 1-1000, default 100; 400 naming
    ``limit`` otherwise)."""
    ops = _ops(request)
    q: SecurityEventsQuery = _query(request, SecurityEventsQuery)
    rows = await ops.security_events(request.match_info["id"], q.limit)
    return json_response({"items": records_json(rows)})


@routes.post(BASE + "/monitors")
async def post_monitors(request: web.Request) -> web.Response:
    """2.0.1 SetVariableMonitoring; each monitor with the station's result."""
    ops = _ops(request)
    b: MonitorsIn = await read_body(request, MonitorsIn)
    data = []
    for m in b.monitors:
        component: dict[str, Any] = {"name": m.component}
        if m.evse_id is not None:
            component["evse"] = {"id": m.evse_id}
        data.append({"value": m.value, "type": m.type, "severity": m.severity,
                     "component": component, "variable": {"name": m.variable}})
    rows = await ops.set_variable_monitoring(request.match_info["id"], data)
    return json_response({"items": records_json(rows)}, 201)


@routes.get(BASE + "/monitors")
async def get_monitors(request: web.Request) -> web.Response:
    """Stored variable monitors."""
    rows = await _ops(request).monitors(request.match_info["id"])
    return json_response({"items": records_json(rows)})
