"""A throwaway mosquitto MQTT broker for tests (Debian package ``mosquitto``).

    broker = start_mosquitto(tmp_path)      # listens on 127.0.0.1:<free port>, anonymous
    broker.host, broker.port
    broker.stop()                           # terminate (idempotent)
    broker.restart()                        # same port again (after stop)

Usable from any test module: ``from tests.mqtt_broker import start_mosquitto``. The broker
keeps no persistence; its log goes to ``<tmp_path>/mosquitto.log``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Broker", "MosquittoNotAvailable", "find_mosquitto", "free_port", "start_mosquitto"]

HOST = "127.0.0.1"
DEFAULT_BINARY = "/usr/sbin/mosquitto"


class MosquittoNotAvailable(RuntimeError):
    """The mosquitto binary is not installed."""


def find_mosquitto() -> str:
    """The mosquitto binary (``$MOSQUITTO_BIN``, /usr/sbin/mosquitto, or on PATH).

    Raises:
        MosquittoNotAvailable: not installed (with the install command).
    """
    candidates = [os.environ.get("MOSQUITTO_BIN"), DEFAULT_BINARY, shutil.which("mosquitto")]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise MosquittoNotAvailable(
        "mosquitto (MQTT broker) not found at /usr/sbin/mosquitto or on PATH: install it with "
        "`apt-get install -y mosquitto` (Debian; .ci/run does this)"
    )


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@dataclass
class Broker:
    """A running mosquitto process (see :func:`start_mosquitto`)."""

    binary: str
    config: Path
    log: Path
    port: int
    host: str = HOST
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self, timeout_s: float = 10.0) -> None:
        """Start the process and wait until it accepts TCP connections.

        Raises:
            RuntimeError: it exited or did not listen within ``timeout_s`` (log attached).
        """
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [self.binary, "-c", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mosquitto exited ({self.process.returncode}):\n{self.tail()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"mosquitto did not listen on {self.port}:\n{self.tail()}")

    def stop(self) -> None:
        """Terminate the broker (SIGTERM, then SIGKILL after 5 s). Idempotent."""
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def restart(self) -> None:
        """Start again on the same port (after :meth:`stop`)."""
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        """True while the process runs."""
        return self.process is not None and self.process.poll() is None

    def tail(self, lines: int = 30) -> str:
        """The end of the broker's log."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def start_mosquitto(tmp_path: Path, port: int | None = None) -> Broker:
    """Start mosquitto on 127.0.0.1 (anonymous, no persistence) with its files in
    ``tmp_path``.

    Raises:
        MosquittoNotAvailable: the binary is missing (install: ``apt-get install -y mosquitto``).
        RuntimeError: it did not start.
    """
    binary = find_mosquitto()
    tmp_path.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    config = tmp_path / f"mosquitto-{port}.conf"
    lines = [
        f"listener {port} {HOST}",
        "allow_anonymous true",
        "persistence false",
        "log_dest stdout",
        "log_type error",
        "log_type warning",
        "log_type notice",
    ]
    if os.geteuid() == 0:
        lines.append("user root")  # no privilege drop: the config and log stay readable
    config.write_text("\n".join(lines) + "\n")
    broker = Broker(binary=binary, config=config, log=tmp_path / f"mosquitto-{port}.log",
                    port=port)
    broker.start()
    return broker
