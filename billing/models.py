"""Billing tables (payments, outbox, webhook events). Filled by the billing issue."""
