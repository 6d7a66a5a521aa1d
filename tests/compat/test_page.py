"""docs/OPEN_WEBUI.md states what the compatibility suite does and drives: the pins
it installs, the command that runs it, the admin calls that connect Open WebUI, the
listing allowance's default. Part of the default run (only the suite itself is
on demand)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Final

from nz_proxy.settings import Settings
from tests.compat import conftest
from tests.compat.install import OPEN_WEBUI, TORCH
from tests.compat.openwebui import (
    CONNECTION_PATH,
    EMBEDDING_PATH,
    connection_settings,
    embedding_settings,
)

PAGE: Final = (Path(__file__).resolve().parents[2] / "docs" / "OPEN_WEBUI.md").read_text()
GATEWAY: Final = "http://gateway.internal:8080"
KEY: Final = "nz_…"  # the page's placeholder


def curl_body(path: str) -> object:
    """The JSON body of the page's ``curl`` to ``path``."""
    found = re.search(re.escape(path) + r"\".*?-d '(.*?)'", PAGE, re.DOTALL)
    assert found, path
    return json.loads(found.group(1))


def test_the_page_names_the_pins_and_the_command() -> None:
    assert f"`{TORCH}`" in PAGE
    assert f"`{OPEN_WEBUI}`" in PAGE
    assert "uv run pytest -m compat tests/compat" in PAGE
    assert "uv run pytest -m compat tests/compat" in (conftest.__doc__ or "")


def test_the_pages_admin_calls_are_the_suites() -> None:
    assert curl_body(CONNECTION_PATH) == connection_settings(GATEWAY, KEY)
    assert curl_body(EMBEDDING_PATH) == embedding_settings(GATEWAY, KEY)


def test_the_page_states_the_listing_allowance_default() -> None:
    assert f"`LISTING_RPM` ({Settings().listing_rpm} a minute)" in PAGE
