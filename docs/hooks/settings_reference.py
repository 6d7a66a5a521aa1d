"""mkdocs hook: the environment reference in DEPLOYMENT.md is generated from the
settings object itself (``nz_proxy.settings``), so the docs cannot drift from the code.
"""

from __future__ import annotations

from typing import Any

from nz_proxy.settings import settings_reference

MARKER = "<!-- settings-reference -->"


def render() -> str:
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for variable, default, description in settings_reference():
        shown = f"`{default}`" if default not in ("unset", "empty") else default
        rows.append(f"| `{variable}` | {shown} | {description.replace('|', '/')} |")
    return "\n".join(rows)


def on_page_markdown(markdown: str, **_: Any) -> str:
    return markdown.replace(MARKER, render()) if MARKER in markdown else markdown
