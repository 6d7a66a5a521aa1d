"""Logging: structlog, JSON lines on stdout (console rendering for people), and the one
canonical line per request (SPEC §10). Keys, Authorization headers and prompts never
appear: the line is built from the exchange's fields, not from the request."""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

from nz_proxy.exchange import Exchange, redact_path
from nz_proxy.settings import Settings

__all__ = ["configure_logging", "request_fields"]


def configure_logging(settings: Settings) -> None:
    level = getattr(logging, settings.log_level.upper())
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer()
        if settings.log_format == "console"
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stdout),
        cache_logger_on_first_use=True,
    )


def request_fields(exchange: Exchange) -> dict[str, Any]:
    """The canonical request line's fields."""
    policy = exchange.policy
    return {
        "request_id": exchange.request_id,
        "method": exchange.method,
        "endpoint": exchange.endpoint or redact_path(exchange.path),
        "status": exchange.status,
        "tenant": policy.tenant if policy else None,
        "key_prefix": exchange.key_prefix,
        "model": exchange.model,
        "stream": exchange.stream,
        "latency_ms": exchange.elapsed_ms(),
        "ttft_ms": exchange.ttft_ms,
        "tokens_in": exchange.tokens_in,
        "tokens_out": exchange.tokens_out,
        "error": exchange.error,
        "cause": exchange.cause,
        "client_ip": exchange.client_ip,
    }
