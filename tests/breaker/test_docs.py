"""The configuration examples in docs/breakers.md are valid."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from breaker.config import validate_config

DOC = Path(__file__).resolve().parents[2] / "docs" / "breakers.md"
EXAMPLES = re.findall(r"```json\n(.*?)```", DOC.read_text(), flags=re.S)


def test_every_driver_type_has_an_example() -> None:
    kinds = {(c["type"], c.get("preset")) for c in map(json.loads, EXAMPLES)}
    assert kinds == {("mqtt", "shelly_gen2"), ("mqtt", "tasmota"), ("mqtt", "generic"),
                     ("modbus", None), ("ocpp", None), ("simulator", None)}


@pytest.mark.parametrize("text", EXAMPLES)
def test_example_is_valid(text: str) -> None:
    config = json.loads(text)
    assert validate_config(config)["type"] == config["type"]
