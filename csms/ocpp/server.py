"""The OCPP websocket endpoint: handshake checks, charger authentication and the registry.

``ws[s]://HOST:PORT/ocpp/{chargePointId}`` or ``/{chargePointId}``; the identity is
percent-decoded once (``+`` stays ``+``). Before the upgrade we check, in order:

1. path and identity (400 malformed, identity from Basic auth when the path has none);
2. subprotocol: one we speak, or none offered (served as OCPP 1.6, as real chargers need);
   only unsupported ones offered -> 400 naming what we speak;
3. the charge point is registered (404 otherwise, unless ``CSMS_AUTO_REGISTER``);
4. its security profile (OCPP 1.6 Security Whitepaper / 2.0.1 Part 2 A00):
   1 = HTTP Basic (username = charge point id, password hash argon2id),
   2 = TLS + Basic, 3 = TLS with a client certificate whose CN is the id (401/403 otherwise).

A new authenticated connection for an id replaces the old one (closed with 1001, its pending
calls failed); each connection only unregisters its own generation.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import ssl
import time
from collections import deque
from datetime import datetime
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.headers import build_www_authenticate_basic, parse_authorization_basic
from websockets.http11 import Request, Response

from csms.db import Database
from csms.metrics import Metrics
from csms.models import ChargePoint, utcnow
from csms.ocpp.connection import OcppConnection, Route
from csms.ocpp.rpc import OCPP16, OCPP201
from csms.service import ChargingService
from csms.settings import Settings

log = logging.getLogger(__name__)

_hasher = PasswordHasher()
SERVER_PREFERENCE = (OCPP201, OCPP16)
MAX_ID_LENGTH = 48
MAX_AUTH_FAILURES = 5
"""Failed (or in-flight) password checks per charge point within the window before new
passwords are refused unhashed (429)."""
AUTH_FAILURE_WINDOW = 60.0
"""Seconds a failed password check counts against its charge point."""
ARGON2_SLOTS = 2
"""argon2 verifications running at once (each ~50 ms of CPU and 64 MiB)."""


class TooManyAttempts(Exception):
    """A charge point id is throttled after failed password checks."""


def hash_password(password: str) -> str:
    """argon2id hash of a charger password (blocking: ~tens of ms; call from a thread)."""
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    """True if ``password`` matches ``password_hash`` (blocking; call from a thread)."""
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def parse_identity(path: str) -> str | None:
    """The decoded charge point id of ``/ocpp/{id}`` or ``/{id}``; None for ``/``.

    Raises:
        ValueError: any other path shape, or an id with control characters / over 48 chars.
    """
    path = path.split("?", 1)[0]
    parts = path.split("/")
    if parts in (["", ""], [""]) or parts == ["", "ocpp", ""] or parts == ["", "ocpp"]:
        return None
    if len(parts) == 2 and parts[0] == "":
        segment = parts[1]
    elif len(parts) == 3 and parts[:2] == ["", "ocpp"]:
        segment = parts[2]
    else:
        raise ValueError("path must be /ocpp/{chargePointId} or /{chargePointId}")
    identity = unquote(segment, errors="strict")
    if not identity or len(identity) > MAX_ID_LENGTH:
        raise ValueError(f"charge point id must be 1-{MAX_ID_LENGTH} characters")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in identity) or "/" in identity:
        raise ValueError("charge point id contains control characters")
    return identity


def offered_subprotocols(headers: Headers) -> list[str]:
    """The subprotocols a client offered, in its order."""
    return [
        p.strip()
        for value in headers.get_all("Sec-WebSocket-Protocol")
        for p in value.split(",")
        if p.strip()
    ]


class ConnectionRegistry:
    """Open connections by charge point id."""

    def __init__(self) -> None:
        self._by_id: dict[str, OcppConnection] = {}

    def get(self, cp_id: str) -> OcppConnection | None:
        """The open connection of ``cp_id``, if any."""
        conn = self._by_id.get(cp_id)
        return None if conn is None or conn.closed else conn

    def replace(self, conn: OcppConnection) -> OcppConnection | None:
        """Register ``conn``; return the connection it replaces."""
        old = self._by_id.get(conn.charge_point_id)
        self._by_id[conn.charge_point_id] = conn
        return old

    def remove(self, conn: OcppConnection) -> bool:
        """Unregister ``conn`` if it is still the current one (same generation)."""
        if self._by_id.get(conn.charge_point_id) is conn:
            del self._by_id[conn.charge_point_id]
            return True
        return False

    def __len__(self) -> int:
        return len(self._by_id)

    def ids(self) -> list[str]:
        """Ids with an open connection."""
        return list(self._by_id)


def build_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """TLS 1.2+ server context; with a CA file, client certificates are requested (optional,
    so profile-2 chargers without one can still connect) and verified against it."""
    if not settings.tls_enabled:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(settings.tls_cert_file), str(settings.tls_key_file))
    if settings.tls_ca_file is not None:
        ctx.load_verify_locations(str(settings.tls_ca_file))
        ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


def peer_common_name(connection: ServerConnection) -> str | None:
    """CN of the verified client certificate, if any."""
    ssl_object = connection.transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    cert = ssl_object.getpeercert()
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


class OcppServer:
    """The websocket server. ``routes`` maps each spoken subprotocol to its handlers."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        service: ChargingService,
        metrics: Metrics,
        routes: dict[str, dict[str, Route]],
        registry: ConnectionRegistry,
    ) -> None:
        self.settings = settings
        self.db = db
        self.service = service
        self.metrics = metrics
        self.routes = routes
        self.registry = registry
        self._server: Server | None = None
        self._generations = itertools.count(1)
        self._seen: dict[str, datetime] = {}
        self._flusher: asyncio.Task[None] | None = None
        self._verified: dict[tuple[str, str], bytes] = {}
        self._auth_failures: dict[str, deque[float]] = {}
        self._auth_inflight: dict[str, int] = {}
        self._argon2_slots = asyncio.Semaphore(ARGON2_SLOTS)
        self.port: int | None = None

    async def start(self) -> None:
        """Listen on ``CSMS_OCPP_HOST:CSMS_OCPP_PORT`` (port 0 picks a free one: see ``port``)."""
        s = self.settings
        self._server = await serve(
            self._handle,
            s.ocpp_host,
            s.ocpp_port,
            ssl=build_ssl_context(s),
            subprotocols=[p for p in SERVER_PREFERENCE if p in self.routes],  # type: ignore[misc]
            select_subprotocol=self._select_subprotocol,
            process_request=self._process_request,
            max_size=s.ocpp_max_frame_bytes,
            max_queue=16,
            compression=None,
            ping_interval=s.ocpp_ping_interval,
            ping_timeout=s.ocpp_ping_timeout,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._flusher = asyncio.create_task(self._flush_seen_forever(), name="last-seen")
        log.info(
            "OCPP endpoint on %s://%s:%s/ocpp/{id} (%s)",
            "wss" if s.tls_enabled else "ws",
            s.ocpp_host,
            self.port,
            ", ".join(self.routes),
        )

    async def stop(self) -> None:
        """Close every connection and stop listening."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        if self._flusher is not None:
            self._flusher.cancel()
            try:
                await self._flusher
            except asyncio.CancelledError:
                pass
            self._flusher = None
        await self._flush_seen()

    # -- handshake ------------------------------------------------------------------------

    def _select_subprotocol(self, connection: ServerConnection, offered: Any) -> Any:
        for proto in SERVER_PREFERENCE:
            if proto in self.routes and proto in offered:
                return proto
        return None

    def _refuse(
        self, connection: ServerConnection, status: HTTPStatus, text: str, basic: bool = False
    ) -> Response:
        response = connection.respond(status, text + "\n")
        if basic:
            response.headers["WWW-Authenticate"] = build_www_authenticate_basic("ocpp")
        log.info("refused %s: %s %s", connection.remote_address, int(status), text)
        return response

    async def _process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        try:
            identity = parse_identity(request.path)
        except (ValueError, UnicodeDecodeError) as exc:
            return self._refuse(connection, HTTPStatus.BAD_REQUEST, str(exc))
        offered = offered_subprotocols(request.headers)
        if offered and not any(p in self.routes for p in offered):
            return self._refuse(
                connection,
                HTTPStatus.BAD_REQUEST,
                f"unsupported OCPP subprotocol {', '.join(offered)}; "
                f"this server speaks {', '.join(self.routes)}",
            )
        if not offered and OCPP16 not in self.routes:
            return self._refuse(connection, HTTPStatus.BAD_REQUEST, "no OCPP subprotocol offered")
        credentials: tuple[str, str] | None = None
        auth_header = request.headers.get("Authorization")
        if auth_header:
            try:
                credentials = parse_authorization_basic(auth_header)
            except Exception:  # websockets raises InvalidHeader variants
                return self._refuse(
                    connection,
                    HTTPStatus.UNAUTHORIZED,
                    "malformed Authorization header",
                    basic=True,
                )
        if identity is None:
            if credentials is None:
                return self._refuse(
                    connection, HTTPStatus.NOT_FOUND, "no charge point id in the path", basic=True
                )
            identity = credentials[0]
        cp = await self.db.read(lambda s: s.get(ChargePoint, identity))
        if cp is None:
            if not self.settings.auto_register:
                return self._refuse(
                    connection, HTTPStatus.NOT_FOUND, f"unknown charge point {identity!r}"
                )
            cp = await self._auto_register(identity)
        if cp.kind != "ocpp":
            return self._refuse(
                connection, HTTPStatus.NOT_FOUND,
                f"{identity!r} is a {cp.kind} site, not an OCPP charge point",
            )
        refusal = await self._authenticate(connection, cp, credentials)
        if refusal is not None:
            return refusal
        connection.csms_identity = identity  # type: ignore[attr-defined]
        return None

    async def _auto_register(self, identity: str) -> ChargePoint:
        async def unit(s: Any) -> ChargePoint:
            cp = await s.get(ChargePoint, identity)
            if cp is None:
                cp = ChargePoint(id=identity, security_profile=0)
                s.add(cp)
            return cp

        log.warning("auto-registering unknown charge point %r (CSMS_AUTO_REGISTER)", identity)
        return await self.db.write(unit)

    async def _authenticate(
        self, connection: ServerConnection, cp: ChargePoint, credentials: tuple[str, str] | None
    ) -> Response | None:
        profile = cp.security_profile
        tls = connection.transport.get_extra_info("ssl_object") is not None
        if profile >= 2 and not tls:
            return self._refuse(
                connection, HTTPStatus.FORBIDDEN, f"security profile {profile} needs TLS (wss://)"
            )
        if profile == 3:
            cn = peer_common_name(connection)
            if cn is None:
                return self._refuse(
                    connection,
                    HTTPStatus.UNAUTHORIZED,
                    "a client certificate is required (security profile 3)",
                )
            if cn != cp.id:
                return self._refuse(
                    connection,
                    HTTPStatus.FORBIDDEN,
                    "client certificate CN does not match the charge point id",
                )
            return None
        if profile in (1, 2):
            if credentials is None:
                return self._refuse(
                    connection,
                    HTTPStatus.UNAUTHORIZED,
                    "HTTP Basic authentication required",
                    basic=True,
                )
            username, password = credentials
            try:
                ok = (
                    username == cp.id
                    and cp.password_hash is not None
                    and await self._check_password(cp.id, cp.password_hash, password)
                )
            except TooManyAttempts:
                response = self._refuse(
                    connection, HTTPStatus.TOO_MANY_REQUESTS,
                    "too many failed logins for this charge point, retry later",
                )
                response.headers["Retry-After"] = str(int(AUTH_FAILURE_WINDOW))
                return response
            if not ok:
                return self._refuse(
                    connection, HTTPStatus.UNAUTHORIZED, "invalid credentials", basic=True
                )
        return None

    async def _check_password(self, cp_id: str, password_hash: str, password: str) -> bool:
        """argon2 verification off the event loop; a verified (hash, password) pair is
        remembered by its SHA-256 so that reconnect storms cost no argon2 work.

        Guessing is throttled per charge point: with ``MAX_AUTH_FAILURES`` failures (or
        attempts in flight) in the last ``AUTH_FAILURE_WINDOW`` seconds, new unknown passwords
        are refused without hashing; at most ``ARGON2_SLOTS`` verifications run at once.

        Raises:
            TooManyAttempts: the id is throttled (answered 429 with Retry-After).
        """
        digest = hashlib.sha256(password.encode()).digest()
        if self._verified.get((cp_id, password_hash)) == digest:
            return True
        now = time.monotonic()
        recent = self._auth_failures.setdefault(cp_id, deque())
        while recent and now - recent[0] > AUTH_FAILURE_WINDOW:
            recent.popleft()
        if len(recent) + self._auth_inflight.get(cp_id, 0) >= MAX_AUTH_FAILURES:
            raise TooManyAttempts(cp_id)
        self._auth_inflight[cp_id] = self._auth_inflight.get(cp_id, 0) + 1
        try:
            async with self._argon2_slots:
                ok = await asyncio.to_thread(verify_password, password_hash, password)
        finally:
            self._auth_inflight[cp_id] -= 1
            if not self._auth_inflight[cp_id]:
                del self._auth_inflight[cp_id]
        if ok:
            self._verified[(cp_id, password_hash)] = digest
            recent.clear()
        else:
            recent.append(time.monotonic())
        if not recent:
            self._auth_failures.pop(cp_id, None)
        return ok

    # -- connection -----------------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        cp_id: str = ws.csms_identity  # type: ignore[attr-defined]
        version = ws.subprotocol or OCPP16
        conn = OcppConnection(
            ws,
            cp_id,
            version,
            self.routes[version],
            self.metrics,
            next(self._generations),
            self._mark_seen,
        )
        old = self.registry.replace(conn)
        if old is not None:
            log.info("%s: new connection replaces the previous one", cp_id)
            await old.close(1001, "replaced by a new connection")
        self.metrics.connected.set(len(self.registry))
        await self.service.mark_connected(cp_id, version, True)
        log.info("%s connected (%s)", cp_id, version)
        try:
            await conn.run()
        except ConnectionClosed:
            pass
        finally:
            if self.registry.remove(conn):
                self.metrics.connected.set(len(self.registry))
                await self.service.mark_connected(cp_id, version, False)
            log.info("%s disconnected", cp_id)

    def _mark_seen(self, cp_id: str) -> None:
        self._seen[cp_id] = utcnow()

    async def _flush_seen(self) -> None:
        seen, self._seen = self._seen, {}
        await self.service.flush_last_seen(seen)

    async def _flush_seen_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.last_seen_flush_interval)
            try:
                await self._flush_seen()
            except Exception:
                log.exception("flushing last-seen times failed")
