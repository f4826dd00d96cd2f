"""Billing: tariff maths and the Stripe edge. Knows nothing of OCPP or HTTP (imports neither
``csms`` nor ``api``).

Modules (import what you need; this package imports nothing at import time):

* :mod:`billing.currency`     ISO 4217 exponents, Stripe minimum charges, minor-unit rounding.
* :mod:`billing.tariff`       OCPI 2.2.1-shaped tariffs and ``compute_cost`` (pure).
* :mod:`billing.models`       the billing tables (SQLModel).
* :mod:`billing.payments`     payment state machine, outbox rows, settlement policies (DB only).
* :mod:`billing.stripe_edge`  ``StripeEdge``: async Stripe calls with idempotency keys.
* :mod:`billing.service`      ``Billing``: customers, cards, holds, settle, refunds, outbox worker.
* :mod:`billing.webhooks`     ``WebhookProcessor``: verify, store, reconcile Stripe events.
* :mod:`billing.emulator`     localstripe in-process (no real money).
* :mod:`billing.errors`       the exception tree.

See docs/billing.md for the flows and the state machine.
"""
