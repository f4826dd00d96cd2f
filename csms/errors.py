"""The errors of the CSMS core, one tree (the API maps each class to one HTTP status)::

CsmsError
 +-- NotFound              unknown charge point, transaction, ...        -> 404
 +-- Conflict              state does not allow it                       -> 409
 |    +-- NotConnected     the charge point has no open websocket        -> 409
 +-- InvalidRequest        a payload fails its schema (names the field)  -> 400
 +-- CallFailed            a CSMS-initiated call did not succeed
      +-- CallTimeout      no answer within the timeout                  -> 504
      +-- CallRejected     the charger answered a CALLERROR              -> 502
      +-- InvalidAnswer    a strict call's CALLRESULT fails its schema   -> 502
      +-- ConnectionLost   the socket closed while we waited             -> 502
      +-- DeviceNotConfirmed  a breaker did not confirm a close/open     -> 504
      +-- DeviceUnreachable   a breaker command could not be delivered   -> 502
"""

from __future__ import annotations

from typing import Any


class CsmsError(Exception):
    """Base of all CSMS errors. ``code`` is a stable machine-readable string."""

    code = "error"

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class NotFound(CsmsError):
    """The thing named does not exist (or is not visible to the caller)."""

    code = "not_found"


class Conflict(CsmsError):
    """The current state does not allow the request."""

    code = "conflict"


class NotConnected(Conflict):
    """The charge point is registered but has no open connection."""

    code = "not_connected"


class InvalidRequest(CsmsError):
    """Bad input; ``field`` names the offending field."""

    code = "invalid_request"


class CallFailed(CsmsError):
    """A CSMS-initiated OCPP call did not return a CALLRESULT."""

    code = "call_failed"


class CallTimeout(CallFailed):
    """No answer within the timeout (seconds in the message)."""

    code = "timeout"


class ConnectionLost(CallFailed):
    """The websocket closed (or was replaced) before the answer came."""

    code = "connection_lost"


class DeviceNotConfirmed(CallFailed):
    """A breaker did not read back the state it was switched to (after the retries)."""

    code = "not_confirmed"


class DeviceUnreachable(CallFailed):
    """A breaker command could not be delivered (broker down, TCP refused, offline)."""

    code = "device_unavailable"


class CallRejected(CallFailed):
    """The charger answered with a CALLERROR; ``ocpp_code`` is its error code as sent."""

    code = "call_error"

    def __init__(self, ocpp_code: str, description: str, details: dict[str, Any]) -> None:
        super().__init__(f"charger answered CALLERROR {ocpp_code}: {description}")
        self.ocpp_code = ocpp_code
        self.description = description
        self.details = details


class InvalidAnswer(CallFailed):
    """The charger answered a CALLRESULT that does not match the action's OCPP schema, and
    the caller asked for a strict answer (``CommandService.call(..., strict=True)``: an
    operation that stores or parses it). ``field`` names the offending field of the answer
    (``status``, ``certificateHashData``...); the raw answer is kept in the ``command`` row."""

    code = "invalid_answer"


class PaymentRequired(CsmsError):
    """The card hold was not authorised (402); ``decline_code`` is Stripe's."""

    code = "payment_declined"

    def __init__(self, message: str, decline_code: str | None = None,
                 stripe_code: str | None = None, field: str | None = None) -> None:
        super().__init__(message, field)
        self.decline_code = decline_code
        self.stripe_code = stripe_code


class Unavailable(CsmsError):
    """A dependency (Stripe) did not answer; try again later (503)."""

    code = "unavailable"


class Forbidden(CsmsError):
    """The caller may not do this (403)."""

    code = "forbidden"
