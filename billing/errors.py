"""The billing package's one exception tree.

::

    BillingError
     ├── TariffError              a tariff document is invalid (names the field)
     ├── UsageError               the metered session handed to compute_cost is inconsistent
     ├── StripeError              an answer (or no answer) from Stripe
     │    ├── StripeUnavailable   network error, timeout, HTTP 5xx/429, bad key: retry later
     │    ├── CardDeclined        HTTP 402 card error: code, decline_code, payment_intent_id
     │    └── StripeRejected      other HTTP 4xx: our request is wrong or the object's state is
     ├── WebhookError             a webhook delivery must be refused with HTTP 400
     │    ├── WebhookSignatureError   missing / wrong Stripe-Signature or secret
     │    └── WebhookPayloadError     body is not a Stripe event
     ├── NoPaymentMethod          the driver has no Stripe customer or no default card
     ├── PaymentNotFound          no payment record for that session id
     └── PaymentStateError        the operation does not fit the payment's state or amounts

Domain code raises these; the HTTP layer maps them to responses in one place.
"""

from __future__ import annotations


class BillingError(Exception):
    """Base class of every error raised by the billing package."""


class TariffError(BillingError, ValueError):
    """A tariff document is invalid.

    Attributes:
        field: dotted path of the offending field, e.g. ``elements[1].price_components[0].price``.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class UsageError(BillingError, ValueError):
    """The session usage handed to :func:`billing.tariff.compute_cost` is inconsistent."""


class StripeError(BillingError):
    """Stripe answered with an error, or did not answer.

    Attributes:
        code: Stripe's ``error.code`` if any (``card_declined``, ``amount_too_small``...).
        http_status: the HTTP status, ``None`` when no answer arrived.
    """

    def __init__(self, message: str, *, code: str | None = None,
                 http_status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.http_status = http_status


class StripeUnavailable(StripeError):
    """No usable answer: connection refused, timeout, HTTP 5xx, 429 or an authentication problem.

    The same request (same idempotency key) may be sent again later.
    """


class CardDeclined(StripeError):
    """The card was declined (HTTP 402, ``type=card_error``).

    Attributes:
        decline_code: the issuer's reason as Stripe reports it (``insufficient_funds``,
            ``generic_decline``...); ``None`` when Stripe (or an emulator) sends none.
        payment_intent_id: the PaymentIntent the decline belongs to, when known.
    """

    def __init__(self, message: str, *, code: str | None = None,
                 decline_code: str | None = None, payment_intent_id: str | None = None,
                 charge_id: str | None = None, http_status: int | None = 402) -> None:
        super().__init__(message, code=code, http_status=http_status)
        self.decline_code = decline_code
        self.payment_intent_id = payment_intent_id
        self.charge_id = charge_id


class StripeRejected(StripeError):
    """Stripe refused the request for good (HTTP 400/404/409 other than card errors)."""


class WebhookError(BillingError):
    """A webhook delivery is refused (the route answers HTTP 400).

    Attributes:
        code: ``bad_signature`` or ``bad_payload``.
        field: the request part at fault (``Stripe-Signature`` or ``body``).
    """

    code = "bad_request"
    field = "body"


class WebhookSignatureError(WebhookError):
    """The ``Stripe-Signature`` header is missing, malformed, too old or does not match."""

    code = "bad_signature"
    field = "Stripe-Signature"


class WebhookPayloadError(WebhookError):
    """The body is not a JSON Stripe event (no id or type)."""

    code = "bad_payload"
    field = "body"


class NoPaymentMethod(BillingError):
    """The driver has no Stripe customer yet or no default payment method."""


class PaymentNotFound(BillingError):
    """No payment record exists for the session id."""


class PaymentStateError(BillingError):
    """The request does not fit the payment record (state, amounts or a different earlier cost)."""
