"""E2E.md's run block, executed as written (with the repository's virtualenv and free ports):
it must end in two completed, paid sessions (a charger, then a breaker outlet) with the
documented amounts."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def e2e_block() -> str:
    text = (ROOT / "E2E.md").read_text()
    found = re.findall(r"```sh e2e\n(.*?)```", text, re.S)
    assert len(found) == 1, "E2E.md must have exactly one ```sh e2e block"
    return found[0]


@pytest.mark.skipif(
    not (ROOT / ".venv" / "bin" / "csms").exists(), reason="needs the README's .venv"
)
def test_e2e_md_commands_end_in_a_paid_session(tmp_path: Path) -> None:
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CSMS_", "STRIPE_"))}
    env.update(CSMS_API_PORT=str(free_port()), CSMS_OCPP_PORT=str(free_port()))
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", e2e_block()],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    logs = "".join(p.read_text() for p in (tmp_path / "var").glob("*.log")) \
        if (tmp_path / "var").is_dir() else ""
    assert proc.returncode == 0, proc.stdout + proc.stderr + logs
    charger, outlet = (json.loads(line) for line in proc.stdout.strip().splitlines()[-2:])
    for receipt in (charger, outlet):
        assert receipt["status"] == "completed"
        assert receipt["energy_wh"] == 7500 and receipt["total"] == 300
        assert receipt["charged"]["captured_amount"] == 300
        assert receipt["stripe"]["payment_intent_id"].startswith("pi_")
    assert charger["charge_point_id"] == "LOT-1" and outlet["charge_point_id"] == "BAY-7"
    assert outlet["stop_reason"] == "car_full"
    # run again in the same folder (database and emulator data kept): still ends paid
    again = subprocess.run(["bash", "-euo", "pipefail", "-c", e2e_block()], cwd=tmp_path,
                           env=env, capture_output=True, text=True, timeout=240)
    assert again.returncode == 0, again.stdout + again.stderr
    assert json.loads(again.stdout.strip().splitlines()[-1])["total"] == 300
