"""CSMS-initiated calls, the same for every OCPP version: a typed result or a typed error.

``call`` validates the request against the action's schema for the charger's version, records
it (``command`` table), sends it and waits (``CSMS_COMMAND_TIMEOUT`` seconds by default). It
returns the charger's CALLRESULT payload or raises one of :mod:`csms.errors` - never None.

An answer that does not match the action's response schema is only logged (the generic
commands route shows the operator what the charger sent), unless the caller asks for a
``strict`` answer: the operations that store or parse what the charger answered
(``csms.operations``) get :class:`csms.errors.InvalidAnswer` (HTTP 502, naming the field)
instead of garbage. Either way the raw answer is kept in the ``command`` row.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from csms.db import Database
from csms.errors import (
    CallFailed,
    CallRejected,
    CallTimeout,
    InvalidAnswer,
    InvalidRequest,
    NotConnected,
    NotFound,
)
from csms.models import ChargePoint, Command, utcnow
from csms.ocpp import rpc
from csms.ocpp.rpc import OcppError
from csms.ocpp.server import ConnectionRegistry, hash_password

log = logging.getLogger(__name__)


def _coerce_configuration(payload: dict[str, Any]) -> dict[str, Any]:
    """GetConfiguration.conf values must be strings (OCPP 1.6 §6.23); some chargers send
    numbers or booleans (field case Q10): turn them into strings."""
    for item in payload.get("configurationKey") or []:
        if isinstance(item, dict) and "value" in item and not isinstance(item["value"], str):
            value = item["value"]
            item["value"] = str(value).lower() if isinstance(value, bool) else str(value)
    return payload


_RESPONSE_FIXERS = {"GetConfiguration": _coerce_configuration}

PASSWORD_ACCEPTED = frozenset({"Accepted", "RebootRequired"})

_MISSING = re.compile(r"must contain \['([^']+)'")


def _invalid_answer(action: str, exc: OcppError) -> InvalidAnswer:
    """The error of a strict call whose answer fails the schema; ``field`` is the offending
    field (for a missing required property, the property's name)."""
    field = exc.details.get("field") or None
    if field is None:
        missing = _MISSING.search(exc.description)
        field = missing.group(1) if missing else None
    return InvalidAnswer(
        f"the charger's {action} answer does not match the OCPP schema: {exc.description}",
        field=field)


def _sets_password(action: str, payload: dict[str, Any]) -> bool:
    """True for a call that sets the charger's Basic-auth password (1.6 ChangeConfiguration
    AuthorizationKey; 2.0.1 SetVariables SecurityCtrlr.BasicAuthPassword, A01)."""
    if action == "ChangeConfiguration":
        return str(payload.get("key", "")).lower() == "authorizationkey"
    if action == "SetVariables":
        return any(
            isinstance(d, dict)
            and (d.get("component") or {}).get("name") == "SecurityCtrlr"
            and (d.get("variable") or {}).get("name") == "BasicAuthPassword"
            for d in payload.get("setVariableData") or []
        )
    return False


class CommandService:
    """Sends commands to connected chargers and records each with its outcome."""

    def __init__(self, registry: ConnectionRegistry, db: Database, timeout: float) -> None:
        self.registry = registry
        self.db = db
        self.timeout = timeout

    async def call(
        self,
        cp_id: str,
        action: str,
        payload: dict[str, Any],
        timeout: float | None = None,
        *,
        secret: bool = False,
        strict: bool = False,
    ) -> dict[str, Any]:
        """Send ``action`` with ``payload`` (OCPP field names) to ``cp_id``.

        A payload that sets the charger's Basic-auth password (1.6 ``AuthorizationKey``, 2.0.1
        ``SecurityCtrlr.BasicAuthPassword``) is refused unless ``secret`` (only
        :meth:`rotate_password` sends it: it keeps the stored hash in step, and the password is
        not recorded).

        ``strict``: the answer must match the action's response schema (an operation that
        stores or parses it); without it a deviating answer is logged and returned as sent.
        The answer is recorded in the ``command`` row either way (status ``invalid_answer``
        when a strict call refused it).

        Returns:
            the charger's CALLRESULT payload.

        Raises:
            NotFound: unknown charge point.
            NotConnected: registered but not connected.
            InvalidRequest: unknown action for the charger's version, or the payload fails the
                action's schema (``field`` names the field).
            CallTimeout / CallRejected / ConnectionLost: see :mod:`csms.errors`.
            InvalidAnswer: ``strict`` and the answer fails the schema (``field`` names the
                offending field of the answer).
        """
        conn = self.registry.get(cp_id)
        if conn is None:
            exists = await self.db.read(lambda s: s.get(ChargePoint, cp_id))
            if exists is None:
                raise NotFound(f"unknown charge point {cp_id!r}", field="charge_point_id")
            raise NotConnected(f"charge point {cp_id!r} is not connected")
        if not rpc.has_schema(conn.version, action):
            raise InvalidRequest(f"{action} is not an OCPP {conn.version} action", field="action")
        try:
            rpc.validate(conn.version, action, payload)
        except OcppError as exc:
            raise InvalidRequest(exc.description, field=exc.details.get("field")) from None
        if _sets_password(action, payload) and not secret:
            raise InvalidRequest(
                "the charger password is changed by password rotation, which keeps the stored "
                "hash in step", field="action")
        recorded = {"redacted": True} if secret else payload

        async def record(s: AsyncSession) -> int:
            cmd = Command(charge_point_id=cp_id, action=action, message_id="", request=recorded)
            s.add(cmd)
            await s.flush()
            assert cmd.id is not None
            return cmd.id

        command_id = await self.db.write(record)
        status, response, error_code = "answered", None, None
        try:
            response = await conn.call(action, payload, timeout or self.timeout)
            fixer = _RESPONSE_FIXERS.get(action)
            if fixer is not None:
                response = fixer(response)
            try:
                rpc.validate(conn.version, action, response, response=True)
            except OcppError as exc:
                if strict:
                    status = "invalid_answer"
                    raise _invalid_answer(action, exc) from None
                log.warning("%s: %s response deviates from the schema: %s", cp_id, action, exc)
            except KeyError as exc:  # no response schema to check against
                log.warning("%s: %s response not checked: %s", cp_id, action, exc)
            return response
        except CallTimeout:
            status = "timeout"
            raise
        except CallRejected as exc:
            status, error_code = "error", exc.ocpp_code
            raise
        except InvalidAnswer:
            raise  # status already invalid_answer
        except CallFailed:
            status = "connection_lost"
            raise
        finally:

            async def finish(s: AsyncSession) -> None:
                cmd = await s.get(Command, command_id)
                if cmd is not None:
                    cmd.status = status
                    cmd.response = response
                    cmd.error_code = error_code
                    cmd.answered_at = utcnow()

            await self.db.write(finish)

    async def remote_start(
        self, cp_id: str, connector_id: int, id_tag: str, remote_start_id: int | None = None
    ) -> str:
        """Ask the charger to start a transaction; returns Accepted | Rejected.
        (1.6 RemoteStartTransaction §5.11; 2.0.1 RequestStartTransaction F01.)"""
        conn = self.registry.get(cp_id)
        if conn is not None and conn.version == rpc.OCPP201:
            payload: dict[str, Any] = {
                "evseId": connector_id,
                "idToken": {"idToken": id_tag, "type": "Central"},
                "remoteStartId": remote_start_id or 0,
            }
            result = await self.call(cp_id, "RequestStartTransaction", payload)
        else:
            result = await self.call(
                cp_id, "RemoteStartTransaction", {"connectorId": connector_id, "idTag": id_tag}
            )
        return str(result.get("status"))

    async def remote_stop(self, cp_id: str, ocpp_transaction_id: str) -> str:
        """Ask the charger to stop a transaction; returns Accepted | Rejected.
        (1.6 RemoteStopTransaction §5.12; 2.0.1 RequestStopTransaction F03.)"""
        conn = self.registry.get(cp_id)
        if conn is not None and conn.version == rpc.OCPP201:
            result = await self.call(
                cp_id, "RequestStopTransaction", {"transactionId": ocpp_transaction_id}
            )
        else:
            result = await self.call(
                cp_id, "RemoteStopTransaction", {"transactionId": int(ocpp_transaction_id)}
            )
        return str(result.get("status"))

    async def rotate_password(self, cp_id: str, password: str) -> str:
        """Give the charger a new HTTP Basic password (security profiles 1 and 2) and store its
        hash once the charger accepted it: 2.0.1 A01 (SetVariables
        ``SecurityCtrlr.BasicAuthPassword``), 1.6 Security Whitepaper (ChangeConfiguration
        ``AuthorizationKey``). Returns the charger's status (Accepted / RebootRequired: the hash
        is updated; anything else: the old password stays valid).

        Raises:
            InvalidRequest: the password is not 16-40 characters.
            NotFound / NotConnected / CallFailed: as :meth:`call` (the old password stays).
        """
        if not 16 <= len(password) <= 40 or any(ord(c) < 32 for c in password):
            raise InvalidRequest("the password must be 16-40 printable characters",
                                 field="password")
        password_hash = await asyncio.to_thread(hash_password, password)
        conn = self.registry.get(cp_id)
        if conn is not None and conn.version == rpc.OCPP201:
            result = await self.call(cp_id, "SetVariables", {"setVariableData": [{
                "component": {"name": "SecurityCtrlr"},
                "variable": {"name": "BasicAuthPassword"},
                "attributeValue": password,
            }]}, secret=True)
            status = str(((result.get("setVariableResult") or [{}])[0]).get("attributeStatus"))
        else:
            result = await self.call(cp_id, "ChangeConfiguration",
                                     {"key": "AuthorizationKey", "value": password}, secret=True)
            status = str(result.get("status"))
        if status not in PASSWORD_ACCEPTED:
            log.warning("%s: the charger did not take the new password (%s)", cp_id, status)
            return status

        async def store(s: AsyncSession) -> None:
            cp = await s.get(ChargePoint, cp_id)
            if cp is not None:
                cp.password_hash = password_hash

        await self.db.write(store)
        log.info("%s: password rotated (%s)", cp_id, status)
        return status
