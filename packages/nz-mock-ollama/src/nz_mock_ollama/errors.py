"""The one exception the handlers raise, and Ollama's response shapes for errors and JSON.

Native Ollama errors are a flat `{"error": "<message>"}` with a real status; gin's own
404/405 pages are plain text.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from nz_mock_ollama import gojson

__all__ = ["OllamaError", "error_response", "json_response", "plain_response"]

JSON_CONTENT_TYPE = "application/json; charset=utf-8"


class OllamaError(Exception):
    """A request Ollama would refuse: mapped to `{"error": message}` with `status`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def json_response(body: Any, status: int = 200) -> web.Response:
    """gin's `c.JSON`: compact JSON, `application/json; charset=utf-8`."""
    data = body if isinstance(body, bytes) else gojson.dumps_bytes(body)
    return web.Response(body=data, status=status, headers={"Content-Type": JSON_CONTENT_TYPE})


def error_response(status: int, message: str) -> web.Response:
    """Ollama's error body."""
    return json_response({"error": message}, status)


def plain_response(status: int, text: str) -> web.Response:
    """gin's plain-text pages (`404 page not found`, `405 method not allowed`)."""
    return web.Response(status=status, text=text, content_type="text/plain")
