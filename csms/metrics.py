"""Prometheus metrics, on a registry of their own (nothing is registered at import time)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    """All metrics of one server. ``registry`` is what ``GET /metrics`` exposes.

    Names: ``csms_connected_charge_points``, ``csms_ocpp_messages_total{action,direction,result}``
    (direction ``in`` = charger-initiated, ``out`` = CSMS-initiated; result ``ok`` | the CALLERROR
    code | ``timeout``), ``csms_ocpp_call_seconds{action}`` (CSMS-initiated round trip),
    ``csms_ocpp_handle_seconds{action}`` (charger-initiated, persistence included),
    ``csms_ocpp_schema_warnings_total{action}`` (tolerated deviations in billing messages),
    ``csms_active_transactions``, ``csms_energy_delivered_wh_total``.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.connected = Gauge(
            "csms_connected_charge_points", "Charge points with an open websocket", registry=r
        )
        self.messages = Counter(
            "csms_ocpp_messages_total",
            "OCPP calls by action, direction and result",
            ["action", "direction", "result"],
            registry=r,
        )
        self.call_seconds = Histogram(
            "csms_ocpp_call_seconds",
            "Round trip of CSMS-initiated calls (seconds)",
            ["action"],
            registry=r,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.handle_seconds = Histogram(
            "csms_ocpp_handle_seconds",
            "Time to answer a charger-initiated call, persistence included (seconds)",
            ["action"],
            registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
        )
        self.schema_warnings = Counter(
            "csms_ocpp_schema_warnings_total",
            "Charger messages accepted despite a schema deviation",
            ["action"],
            registry=r,
        )
        self.active_transactions = Gauge(
            "csms_active_transactions", "Transactions started and not yet stopped", registry=r
        )
        self.energy_delivered = Counter(
            "csms_energy_delivered_wh_total", "Energy of completed transactions (Wh)", registry=r
        )
