"""Tables of site load management (``csms.load``): a site is a feeder with a rated current
and the charge points behind it (OCPP chargers and breaker sites). Currents A, margin %,
times timezone-aware UTC."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Column
from sqlmodel import Field, SQLModel

from billing.sqltypes import UtcDateTime
from csms.models import utcnow


class Site(SQLModel, table=True):
    """A feeder (its main breaker) shared by the charge points behind it.

    The CSMS keeps the measured total below ``rated_current_a * (1 - safety_margin_pct/100)``
    (A per phase; ``phases`` 1 or 3). ``min_current_a`` is the lowest current a charger is
    given while charging (IEC 61851-1: 6 A).
    """

    __tablename__ = "site"

    id: str = Field(primary_key=True, max_length=64)
    rated_current_a: float = 100.0
    phases: int = 1
    safety_margin_pct: float = 10.0
    min_current_a: float = 6.0
    created_at: datetime = Field(default_factory=utcnow, sa_column=Column(UtcDateTime()))
    updated_at: datetime = Field(default_factory=utcnow, sa_column=Column(UtcDateTime()))


class SiteMember(SQLModel, table=True):
    """A charge point behind a site's feeder: an OCPP charger, or a breaker site (``kind``
    breaker) whose outlets draw their breaker's rated current. A charge point belongs to one
    site. ``priority``: higher is admitted first and paused last. ``max_current_a``: the
    charger's rating, A (ignored for breakers: their rated current applies)."""

    __tablename__ = "site_member"

    charge_point_id: str = Field(primary_key=True, foreign_key="charge_point.id", max_length=255)
    site_id: str = Field(foreign_key="site.id", max_length=64, index=True)
    priority: int = 0
    max_current_a: float = 32.0
