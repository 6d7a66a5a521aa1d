"""Helpers to read NDJSON bodies byte-exactly in the mock's tests."""

from __future__ import annotations

import json
import re
from typing import Any

UTC_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$")


def ndjson_frames(body: bytes) -> list[dict[str, Any]]:
    """Split an NDJSON body, asserting the framing rules ollama-python depends on."""
    assert body.endswith(b"\n"), body[-80:]
    assert b"\n\n" not in body, "blank line in NDJSON"
    lines = body.split(b"\n")[:-1]
    assert all(line.strip() for line in lines)
    frames = [json.loads(line) for line in lines]
    assert all(isinstance(frame, dict) for frame in frames)
    # compact: Go's encoder puts no spaces between tokens
    assert all(b'": ' not in line and b'", "' not in line for line in lines)
    return frames
