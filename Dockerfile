# ParkCharge CSMS: OCPP endpoint on 9000, HTTP API (/api/v1, /healthz, /metrics) on 8080.
#
#   docker build -t parkcharge-csms .
#   docker run -p 9000:9000 -p 8080:8080 -v csms-data:/data parkcharge-csms
#
# The database is SQLite in the /data volume by default; for PostgreSQL set
# CSMS_DATABASE_URL=postgresql+asyncpg://USER:PASSWORD@HOST:5432/DB. Every setting is a
# CSMS_<NAME> environment variable (see csms/settings.py). `csms serve` applies migrations first.

# --- build: install the package and its dependencies into a virtualenv ----------------------
FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# .dockerignore keeps tests, virtualenvs, node_modules and local databases out
COPY . .
RUN pip install --no-cache-dir .

# --- runtime ----------------------------------------------------------------------------------
FROM python:3.11-slim

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CSMS_DATABASE_URL=sqlite+aiosqlite:////data/csms.db

RUN groupadd --system --gid 10001 csms \
    && useradd --system --uid 10001 --gid csms --home-dir /data --no-create-home \
       --shell /usr/sbin/nologin csms \
    && mkdir -p /data \
    && chown csms:csms /data

COPY --from=build /opt/venv /opt/venv

WORKDIR /data
VOLUME ["/data"]
USER 10001:10001

EXPOSE 9000 8080

HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request as u; port = os.environ.get('CSMS_API_PORT', '8080'); sys.exit(0 if u.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4).status == 200 else 1)"]

CMD ["csms", "serve"]
