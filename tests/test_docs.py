"""The documentation states what the code does: generated where it can be."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from nz_proxy.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def test_the_environment_reference_is_generated_from_the_settings() -> None:
    spec = importlib.util.spec_from_file_location(
        "settings_reference", ROOT / "docs" / "hooks" / "settings_reference.py"
    )
    assert spec is not None
    assert spec.loader is not None
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    page = (ROOT / "docs" / "DEPLOYMENT.md").read_text()
    assert hook.MARKER in page
    rendered = hook.on_page_markdown(page)
    assert hook.MARKER not in rendered
    for name in Settings.__struct_fields__:
        assert f"| `{name.upper()}` |" in rendered, name
    assert "| `BUDGET_DEFAULT_COMPLETION_CAP` | `4096` |" in rendered
