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
    ``csms_active_transactions``, ``csms_energy_delivered_wh_total``; per breaker
    ``csms_breaker_state{breaker,state}``, ``csms_breaker_power_watts``,
    ``csms_breaker_energy_wh``, ``csms_breaker_current_amperes``,
    ``csms_breaker_driver_errors_total{breaker,kind}`` (kind: offline | unavailable |
    unconfirmed); per load-managed site ``csms_site_limit_amperes{site}`` (rated current less
    the safety margin, A), ``csms_site_measured_amperes{site}`` (measured total, A),
    ``csms_site_queue_length{site}`` (sessions waiting for capacity).
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
        self.breaker_state = Gauge(
            "csms_breaker_state",
            "1 for the state each breaker was last read in (closed/open/tripped/offline)",
            ["breaker", "state"],
            registry=r,
        )
        self.breaker_power = Gauge(
            "csms_breaker_power_watts", "Last power read from each breaker (W)", ["breaker"],
            registry=r,
        )
        self.breaker_energy = Gauge(
            "csms_breaker_energy_wh", "Last energy register read from each breaker (Wh)",
            ["breaker"], registry=r,
        )
        self.breaker_current = Gauge(
            "csms_breaker_current_amperes", "Last current read from each breaker (A)",
            ["breaker"], registry=r,
        )
        self.breaker_errors = Counter(
            "csms_breaker_driver_errors_total",
            "Breaker driver errors: unreachable reads, undelivered or unconfirmed commands",
            ["breaker", "kind"],
            registry=r,
        )
        self.site_limit = Gauge(
            "csms_site_limit_amperes", "Current a site may draw: rating less margin (A)",
            ["site"], registry=r,
        )
        self.site_measured = Gauge(
            "csms_site_measured_amperes", "Measured total current of a site (A)", ["site"],
            registry=r,
        )
        self.site_queue = Gauge(
            "csms_site_queue_length", "Sessions waiting for capacity on a site", ["site"],
            registry=r,
        )
        self.energy_delivered = Counter(
            "csms_energy_delivered_wh_total", "Energy of completed transactions (Wh)", registry=r
        )
