"""OCPP-J RPC framing and schema validation, shared by OCPP 1.6 and 2.0.1.

Frames (OCPP-J 1.6 §4, OCPP 2.0.1 Part 4 §4):
``[2, messageId, action, payload]`` CALL, ``[3, messageId, payload]`` CALLRESULT,
``[4, messageId, errorCode, errorDescription, errorDetails]`` CALLERROR.

Schemas are the OCA JSON schemas shipped in the ``ocpp`` package, compiled once per action with
fastjsonschema (about 20x faster than the library's jsonschema path, and no thread hop).

Error-code mapping for a request that fails its schema (spelling per version: 1.6 says
``FormationViolation`` and ``OccurenceConstraintViolation``, 2.0.1 ``FormatViolation`` and
``OccurrenceConstraintViolation``):

============================  ===================================
schema rule                   CALLERROR code
============================  ===================================
required                      Occurrence constraint violation
type                          TypeConstraintViolation
enum, maxLength, minLength,   PropertyConstraintViolation
pattern, minimum, maximum,
multipleOf, format
additionalProperties, other   Formation (1.6) / Format (2.0.1) violation
============================  ===================================

The error description names the offending field (``data.idTagInfo.status``); the schema is never
echoed to the charger.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import fastjsonschema
import ocpp
import orjson

CALL = 2
CALLRESULT = 3
CALLERROR = 4

OCPP16 = "ocpp1.6"
OCPP201 = "ocpp2.0.1"

_SCHEMA_DIRS = {
    OCPP16: Path(ocpp.__file__).parent / "v16" / "schemas",
    OCPP201: Path(ocpp.__file__).parent / "v201" / "schemas",
}

_PROPERTY_RULES = frozenset(
    {
        "enum",
        "maxLength",
        "minLength",
        "pattern",
        "minimum",
        "maximum",
        "multipleOf",
        "format",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "const",
    }
)


class OcppError(Exception):
    """An OCPP CALLERROR to send (or received). ``code`` is version-neutral; see :func:`wire_code`.

    Neutral codes: NotImplemented, NotSupported, InternalError, ProtocolError, SecurityError,
    FormatViolation, PropertyConstraintViolation, OccurrenceConstraintViolation,
    TypeConstraintViolation, GenericError, RpcFrameworkError, MessageTypeNotSupported.
    """

    def __init__(self, code: str, description: str = "", details: dict[str, Any] | None = None):
        super().__init__(f"{code}: {description}")
        self.code = code
        self.description = description
        self.details = details or {}


def wire_code(code: str, version: str) -> str:
    """Spell a neutral error code the way ``version`` spells it on the wire."""
    if version == OCPP16:
        return {
            "FormatViolation": "FormationViolation",
            "OccurrenceConstraintViolation": "OccurenceConstraintViolation",
            "RpcFrameworkError": "FormationViolation",
            "MessageTypeNotSupported": "FormationViolation",
        }.get(code, code)
    return code


def neutral_code(code: str) -> str:
    """Inverse of :func:`wire_code` for codes received from a charger."""
    return {
        "FormationViolation": "FormatViolation",
        "OccurenceConstraintViolation": "OccurrenceConstraintViolation",
    }.get(code, code)


@dataclass(frozen=True, slots=True)
class Call:
    """A CALL frame. ``payload`` is the raw JSON object (camelCase keys)."""

    message_id: str
    action: str
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class CallResult:
    """A CALLRESULT frame."""

    message_id: str
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class CallError:
    """A CALLERROR frame (codes as received, see :func:`neutral_code`)."""

    message_id: str
    code: str
    description: str
    details: dict[str, Any]


Frame = Call | CallResult | CallError


def parse_frame(raw: str | bytes) -> Frame:
    """Parse one websocket message into a frame.

    Raises:
        OcppError: ``RpcFrameworkError`` (not JSON, not an array, bad message id; ``details``
            carries ``messageId`` when it could be read), ``MessageTypeNotSupported`` (unknown
            message type), ``FormatViolation`` (a CALL whose payload is not an object).
    """
    try:
        msg = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise OcppError("RpcFrameworkError", f"not valid JSON: {exc}") from None
    if not isinstance(msg, list) or len(msg) < 3:
        raise OcppError("RpcFrameworkError", "a frame is a JSON array of at least 3 elements")
    kind, message_id = msg[0], msg[1]
    if not isinstance(message_id, str) or not message_id or len(message_id) > 36:
        raise OcppError("RpcFrameworkError", "messageId must be a string of 1-36 characters")
    where = {"messageId": message_id}
    if kind == CALL:
        if len(msg) != 4 or not isinstance(msg[2], str):
            raise OcppError("RpcFrameworkError", "CALL is [2, messageId, action, payload]", where)
        if not isinstance(msg[3], dict):
            raise OcppError("FormatViolation", "payload must be a JSON object", where)
        return Call(message_id, msg[2], msg[3])
    if kind == CALLRESULT:
        payload = msg[2]
        return CallResult(message_id, payload if isinstance(payload, dict) else {})
    if kind == CALLERROR:
        code = msg[2] if isinstance(msg[2], str) else "GenericError"
        desc = msg[3] if len(msg) > 3 and isinstance(msg[3], str) else ""
        details = msg[4] if len(msg) > 4 and isinstance(msg[4], dict) else {}
        return CallError(message_id, code, desc, details)
    raise OcppError("MessageTypeNotSupported", f"message type {kind!r} is not supported", where)


def dump_call(message_id: str, action: str, payload: dict[str, Any]) -> str:
    """Serialise a CALL frame."""
    return orjson.dumps([CALL, message_id, action, payload]).decode()


def dump_result(message_id: str, payload: dict[str, Any]) -> str:
    """Serialise a CALLRESULT frame."""
    return orjson.dumps([CALLRESULT, message_id, payload]).decode()


def dump_error(message_id: str, error: OcppError, version: str) -> str:
    """Serialise a CALLERROR frame with the code spelt for ``version``."""
    desc = error.description[:255]
    return orjson.dumps(
        [CALLERROR, message_id, wire_code(error.code, version), desc, error.details]
    ).decode()


CHARGER_INITIATED = frozenset(
    {
        # OCPP 1.6 (Core, Firmware, security whitepaper)
        "Authorize",
        "BootNotification",
        "DiagnosticsStatusNotification",
        "FirmwareStatusNotification",
        "Heartbeat",
        "MeterValues",
        "StartTransaction",
        "StatusNotification",
        "StopTransaction",
        "SecurityEventNotification",
        "SignCertificate",
        "LogStatusNotification",
        "SignedFirmwareStatusNotification",
        # OCPP 2.0.1
        "ClearedChargingLimit",
        "Get15118EVCertificate",
        "GetCertificateStatus",
        "NotifyChargingLimit",
        "NotifyCustomerInformation",
        "NotifyDisplayMessages",
        "NotifyEVChargingNeeds",
        "NotifyEVChargingSchedule",
        "NotifyEvent",
        "NotifyMonitoringReport",
        "NotifyReport",
        "PublishFirmwareStatusNotification",
        "ReportChargingProfiles",
        "ReservationStatusUpdate",
        "TransactionEvent",
    }
)
"""Actions only a charger sends (DataTransfer goes both ways)."""


def action_names() -> frozenset[str]:
    """Every action name of every version we speak (bounded: fit for metric labels)."""
    return frozenset(
        name.removesuffix("Request")
        for version in _SCHEMA_DIRS
        for name in _schema_names(version)
        if not name.endswith("Response")
    )


def is_charger_initiated(action: str) -> bool:
    """True for actions a CSMS never sends (the API refuses to send them)."""
    return action in CHARGER_INITIATED


@cache
def _schema_names(version: str) -> frozenset[str]:
    """The schema files of ``version``: the only names ever opened (an action name from the
    wire is never used as a path)."""
    return frozenset(p.stem for p in _SCHEMA_DIRS[version].glob("*.json"))


def _validator(version: str, name: str) -> Any:
    """The compiled validator of schema ``name`` (None if ``version`` has no such schema);
    only real schema names reach the cache, so it stays bounded."""
    if name not in _schema_names(version):
        return None
    return _compiled(version, name)


@cache
def _compiled(version: str, name: str) -> Any:
    path = _SCHEMA_DIRS[version] / f"{name}.json"
    schema = json.loads(path.read_text(encoding="utf-8"))
    schema.pop("$schema", None)  # fastjsonschema picks the draft itself
    # use_default=False: validation never fills in defaults, payloads stay as received
    return fastjsonschema.compile(schema, use_formats=False, use_default=False)


def has_schema(version: str, action: str) -> bool:
    """True if ``action`` is an OCPP action of ``version`` (its request schema exists)."""
    return _request_schema(version, action) in _schema_names(version)


def _request_schema(version: str, action: str) -> str:
    return f"{action}Request" if version == OCPP201 else action


def validate(version: str, action: str, payload: dict[str, Any], response: bool = False) -> None:
    """Validate a request (or, with ``response``, a response) payload against the OCA schema.

    Raises:
        OcppError: with the code from the module table and the offending field in the text.
        KeyError: ``action`` has no schema in ``version``.
    """
    name = _request_schema(version, action)
    if response:
        name = f"{action}Response"
    check = _validator(version, name)
    if check is None:
        raise KeyError(f"{version} has no schema {name}")
    try:
        check(payload)
    except fastjsonschema.JsonSchemaValueException as exc:
        raise schema_error(exc) from None


def schema_error(exc: fastjsonschema.JsonSchemaValueException) -> OcppError:
    """Map a fastjsonschema failure to a neutral :class:`OcppError` (see the module table)."""
    rule = exc.rule or ""
    if rule == "required":
        code = "OccurrenceConstraintViolation"
    elif rule == "type":
        code = "TypeConstraintViolation"
    elif rule in _PROPERTY_RULES:
        code = "PropertyConstraintViolation"
    else:
        code = "FormatViolation"
    field = (exc.name or "data").replace("data.", "", 1) if exc.name != "data" else ""
    message = (exc.message or "invalid").replace(exc.name or "data", field or "payload")
    details = {"field": field} if field else {}
    return OcppError(code, message, details)
