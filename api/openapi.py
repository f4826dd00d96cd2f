"""The OpenAPI 3.1 document of the HTTP API, served at ``GET /api/v1/openapi.json``.

Request bodies come from the pydantic models the routes validate with, so the document and the
validation cannot drift apart; ``tests/test_openapi.py`` checks that every route is described
and every described path is routed.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from pydantic import BaseModel

from api.app import ChargePointIn, IdTagIn, PasswordIn, TokenIn
from api.breakers import BreakerIn, SwitchIn
from api.drivers import IdTagLinkIn, PaymentMethodIn, RefundIn, SessionIn, SignupIn, TariffIn
from api.operations import (
    CertificateIn,
    CertificateQueryIn,
    ChargingProfileIn,
    DiagnosticsIn,
    FirmwareIn,
    LocalListIn,
    LogIn,
    MonitorsIn,
    ProfilesReportIn,
    RemoteStartIn,
    ReservationIn,
)
from api.sites import SiteIn

OPERATOR: list[dict[str, list[str]]] = [{"bearer": []}]
DRIVER: list[dict[str, list[str]]] = [{"bearer": []}]
PUBLIC: list[dict[str, list[str]]] = []

ERROR = {"$ref": "#/components/schemas/Error"}
OBJECT = {"type": "object"}

# (method, path, summary, security, body model, success status, error statuses)
ROUTES: list[tuple[str, str, str, list[Any], type[BaseModel] | None, int, list[int]]] = [
    ("get", "/healthz", "Liveness and database reachability", PUBLIC, None, 200, []),
    ("get", "/metrics", "Prometheus metrics (text exposition format)", PUBLIC, None, 200, []),
    ("get", "/api/v1/openapi.json", "This document", PUBLIC, None, 200, []),
    (
        "post",
        "/api/v1/operator-tokens",
        "Create an operator token (shown once)",
        OPERATOR,
        TokenIn,
        201,
        [400, 401, 403],
    ),
    ("get", "/api/v1/breakers", "Breakers with live state and readings", OPERATOR, None, 200,
     [401, 403]),
    ("put", "/api/v1/sites/{id}",
     "Create or replace a load-managed site (rating A, phases, margin %, members)",
     OPERATOR, SiteIn, 200, [400, 401, 403, 409]),
    ("get", "/api/v1/sites/{id}", "A site's rating and members", OPERATOR, None, 200,
     [401, 403, 404]),
    ("get", "/api/v1/sites/{id}/allocation",
     "A site's live limit, measured total, allocation per session and queue", OPERATOR, None,
     200, [401, 403, 404]),
    ("put", "/api/v1/breakers/{id}",
     "Create or update a breaker site (driver, rating, outlets, tariff, car-full, offline grace)",
     OPERATOR, BreakerIn, 200, [400, 401, 403, 404, 409]),
    ("get", "/api/v1/breakers/{id}", "One breaker with live state and readings", OPERATOR, None,
     200, [401, 403, 404]),
    ("post", "/api/v1/breakers/{id}/close",
     "Close a breaker (audited; 409 without a paid session unless force)", OPERATOR, SwitchIn,
     200, [400, 401, 403, 404, 409, 502, 504]),
    ("post", "/api/v1/breakers/{id}/open",
     "Open a breaker (audited; an active session ends, billed up to the open)", OPERATOR,
     SwitchIn, 200, [400, 401, 403, 404, 502, 504]),
    ("get", "/api/v1/breakers/{id}/audit", "Audit records of a breaker, newest first", OPERATOR,
     None, 200, [401, 403, 404]),
    (
        "get",
        "/api/v1/charge-points",
        "Charge points with live connection state",
        OPERATOR,
        None,
        200,
        [401, 403],
    ),
    (
        "put",
        "/api/v1/charge-points/{id}",
        "Register or update a charge point (password, security profile 0-3, tariff)",
        OPERATOR,
        ChargePointIn,
        200,
        [400, 401, 403],
    ),
    (
        "get",
        "/api/v1/charge-points/{id}",
        "One charge point with its connectors",
        OPERATOR,
        None,
        200,
        [401, 403, 404],
    ),
    (
        "post",
        "/api/v1/charge-points/{id}/commands/{action}",
        "Send an OCPP call (body = its payload, OCPP field names); answers the charger's payload",
        OPERATOR,
        None,
        200,
        [400, 401, 403, 404, 409, 502, 504],
    ),
    (
        "post",
        "/api/v1/charge-points/{id}/password",
        "Rotate a charger's Basic-auth password (stored once the charger accepts)",
        OPERATOR,
        PasswordIn,
        200,
        [400, 401, 403, 404, 409, 502, 504],
    ),
    (
        "get",
        "/api/v1/charge-points/{id}/device-model",
        "The OCPP 2.0.1 device model reported by the station",
        OPERATOR,
        None,
        200,
        [401, 403, 404],
    ),
    ("post", "/api/v1/charge-points/{id}/reservations",
     "Reserve a connector (ReserveNow); the reservation with the charger's answer",
     OPERATOR, ReservationIn, 201, [400, 401, 403, 404, 409, 502, 504]),
    ("get", "/api/v1/charge-points/{id}/reservations",
     "Reservations with their state (Accepted, Used, Cancelled, Expired, refusals)",
     OPERATOR, None, 200, [401, 403, 404]),
    ("post", "/api/v1/charge-points/{id}/reservations/{rid}/cancel",
     "Cancel a reservation (CancelReservation)",
     OPERATOR, None, 200, [400, 401, 403, 404, 409, 502, 504]),
    ("post", "/api/v1/charge-points/{id}/local-list",
     "Send the local list (Full / Differential) from operator tags and drivers' cards",
     OPERATOR, LocalListIn, 200, [400, 401, 403, 404, 409, 502, 504]),
    ("get", "/api/v1/charge-points/{id}/local-list",
     "The local list the charger holds and its version",
     OPERATOR, None, 200, [401, 403, 404]),
    ("post", "/api/v1/charge-points/{id}/local-list/version",
     "Ask the charger its local list version (GetLocalListVersion)",
     OPERATOR, None, 200, [400, 401, 403, 404, 409, 502, 504]),
    ("post", "/api/v1/charge-points/{id}/charging-profiles",
     "Install a charging profile (SetChargingProfile)",
     OPERATOR, ChargingProfileIn, 201, [400, 401, 403, 404, 409, 502, 504]),
    ("get", "/api/v1/charge-points/{id}/charging-profiles",
     "Installed charging profiles (?all=true: every one sent)",
     OPERATOR, None, 200, [401, 403, 404]),
    ("delete", "/api/v1/charge-points/{id}/charging-profiles",
     "Clear charging profiles by id / connector / purpose / stack level",
     OPERATOR, None, 200, [400, 401, 403, 404, 409, 502, 504]),
    ("post", "/api/v1/charge-points/{id}/charging-profiles/remote-start",
     "Remote start with a charging profile",
     OPERATOR, RemoteStartIn, 200, [400, 401, 403, 404, 409, 502, 504]),
    ("post", "/api/v1/charge-points/{id}/charging-profiles/report",
     "Ask a 2.0.1 station for its profiles (GetChargingProfiles)",
     OPERATOR, ProfilesReportIn, 201, [400, 401, 403, 404, 409, 502, 504]),
    ("get", "/api/v1/charge-points/{id}/composite-schedule",
     "The charger's composite schedule (connector_id, duration s, unit)",
     OPERATOR, None, 200, [400, 401, 403, 404, 409, 502, 504]),
    ("post", "/api/v1/charge-points/{id}/firmware",
     "Update firmware (UpdateFirmware / SignedUpdateFirmware): a job",
     OPERATOR, FirmwareIn, 201, [400, 401, 403, 404, 409, 502, 504]),
    ("post", "/api/v1/charge-points/{id}/diagnostics",
     "Upload diagnostics (GetDiagnostics; 2.0.1 GetLog): a job",
     OPERATOR, DiagnosticsIn, 201, [400, 401, 403, 404, 409, 502, 504]),
    ("post", "/api/v1/charge-points/{id}/logs",
     "Upload a diagnostics or security log (GetLog): a job",
     OPERATOR, LogIn, 201, [400, 401, 403, 404, 409, 502, 504]),
    ("get", "/api/v1/charge-points/{id}/jobs",
     "Firmware / diagnostics / log jobs with their status history",
     OPERATOR, None, 200, [401, 403, 404]),
    ("post", "/api/v1/charge-points/{id}/certificates",
     "Install a certificate (InstallCertificate)",
     OPERATOR, CertificateIn, 201, [400, 401, 403, 404, 409, 502, 504]),
    ("get", "/api/v1/charge-points/{id}/certificates",
     "Certificate records of the charger",
     OPERATOR, None, 200, [401, 403, 404]),
    ("post", "/api/v1/charge-points/{id}/certificates/query",
     "Ask the charger its installed certificates (GetInstalledCertificateIds)",
     OPERATOR, CertificateQueryIn, 200, [400, 401, 403, 404, 409, 502, 504]),
    ("delete", "/api/v1/charge-points/{id}/certificates/{cert_id}",
     "Delete a certificate (DeleteCertificate)",
     OPERATOR, None, 200, [400, 401, 403, 404, 409, 502, 504]),
    ("get", "/api/v1/charge-points/{id}/security-events",
     "Security events (SecurityEventNotification), newest first",
     OPERATOR, None, 200, [401, 403, 404]),
    ("post", "/api/v1/charge-points/{id}/monitors",
     "Set variable monitors (2.0.1 SetVariableMonitoring)",
     OPERATOR, MonitorsIn, 201, [400, 401, 403, 404, 409, 502, 504]),
    ("get", "/api/v1/charge-points/{id}/monitors",
     "Variable monitors and the station's answers",
     OPERATOR, None, 200, [401, 403, 404]),
    (
        "put",
        "/api/v1/id-tags/{idTag}",
        "Create or update an operator-managed id tag",
        OPERATOR,
        IdTagIn,
        200,
        [400, 401, 403],
    ),
    ("get", "/api/v1/id-tags", "Operator-managed id tags", OPERATOR, None, 200, [401, 403]),
    (
        "get",
        "/api/v1/transactions",
        "Transactions (filters charge_point_id, status, since, limit)",
        OPERATOR,
        None,
        200,
        [400, 401, 403],
    ),
    (
        "post",
        "/api/v1/drivers",
        "Sign up: driver, Stripe customer and a token (shown once)",
        PUBLIC,
        SignupIn,
        201,
        [400, 409, 503],
    ),
    (
        "get",
        "/api/v1/drivers/me",
        "The calling driver, its card and RFID tags",
        DRIVER,
        None,
        200,
        [401, 403],
    ),
    (
        "post",
        "/api/v1/drivers/me/setup-intents",
        "A SetupIntent to collect a card in the app (client_secret)",
        DRIVER,
        None,
        201,
        [401, 403, 503],
    ),
    (
        "post",
        "/api/v1/drivers/me/payment-methods",
        "Attach a PaymentMethod and make it the default card",
        DRIVER,
        PaymentMethodIn,
        201,
        [400, 401, 403, 503],
    ),
    (
        "post",
        "/api/v1/drivers/me/id-tags",
        "Link an RFID card to the driver",
        DRIVER,
        IdTagLinkIn,
        201,
        [400, 401, 403, 409],
    ),
    (
        "get",
        "/api/v1/drivers/me/sessions",
        "The driver's sessions, newest first",
        DRIVER,
        None,
        200,
        [401, 403],
    ),
    (
        "post",
        "/api/v1/sessions",
        "Start a paid session: hold, then RemoteStartTransaction (402 when declined)",
        DRIVER,
        SessionIn,
        201,
        [400, 401, 402, 403, 404, 409, 503],
    ),
    ("get", "/api/v1/sessions", "All sessions (operators)", OPERATOR, None, 200, [401, 403]),
    (
        "get",
        "/api/v1/sessions/{id}",
        "One session (a driver sees only its own)",
        DRIVER,
        None,
        200,
        [401, 404],
    ),
    (
        "post",
        "/api/v1/sessions/{id}/stop",
        "Stop a session (RemoteStopTransaction)",
        DRIVER,
        None,
        202,
        [401, 404, 409],
    ),
    (
        "post",
        "/api/v1/sessions/{id}/refund",
        "Refund all or part of a session (operators)",
        OPERATOR,
        RefundIn,
        202,
        [400, 401, 403, 404, 409],
    ),
    (
        "get",
        "/api/v1/sessions/{id}/receipt",
        "Receipt: tariff, energy, times, line items, amounts, Stripe ids (?format=html)",
        DRIVER,
        None,
        200,
        [401, 404],
    ),
    (
        "put",
        "/api/v1/tariffs/{id}",
        "Create or replace a tariff: OCPI 2.2.1 Tariff + hold_amount (minor units)",
        OPERATOR,
        TariffIn,
        201,
        [400, 401, 403],
    ),
    ("get", "/api/v1/tariffs", "Tariffs", DRIVER, None, 200, [401]),
    ("get", "/api/v1/tariffs/{id}", "One tariff", DRIVER, None, 200, [401, 404]),
    (
        "post",
        "/api/v1/stripe/webhook",
        "Stripe webhook (signature verified; each event processed once)",
        PUBLIC,
        None,
        200,
        [400, 500],
    ),
]

DESCRIPTIONS = {
    400: "Bad input (the field is named)",
    401: "No valid Bearer token",
    402: "The card hold was declined",
    403: "Not allowed for this caller",
    404: "Not found (or not yours)",
    409: "Conflict with the current state",
    500: "Internal error",
    502: "The charger answered a CALLERROR",
    503: "Stripe unavailable",
    504: "The charger did not answer in time",
}


@cache
def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document (built once)."""
    paths: dict[str, dict[str, Any]] = {}
    for method, path, summary, security, body, ok, errors in ROUTES:
        op: dict[str, Any] = {
            "summary": summary,
            "security": security,
            "responses": {
                str(ok): {
                    "description": "Success",
                    "content": {"application/json": {"schema": OBJECT}},
                }
            },
        }
        params = [p.strip("{}") for p in path.split("/") if p.startswith("{")]
        if params:
            op["parameters"] = [
                {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
                for p in params
            ]
        if body is not None:
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": body.model_json_schema()}},
            }
        for status in errors:
            op["responses"][str(status)] = {
                "description": DESCRIPTIONS[status],
                "content": {"application/json": {"schema": ERROR}},
            }
        paths.setdefault(path, {})[method] = op
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "ParkCharge CSMS API",
            "version": "1",
            "description": "Operators and drivers. Amounts are integers in the "
            "currency's minor unit (JPY has none: 1234 is ¥1,234).",
        },
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["code", "message"],
                            "properties": {
                                "code": {"type": "string"},
                                "message": {"type": "string"},
                                "field": {"type": ["string", "null"]},
                            },
                        }
                    },
                }
            },
        },
    }
