"""The throughput backend: nginx answering like Ollama with canned bodies.

A native server that returns a fixed body costs tens of microseconds, so the backend
is never what limits a throughput run; every microsecond above it is the system's.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.processes import free_port, wait_for_port

__all__ = ["CHAT_BODY", "nginx_config", "nginx_stub"]

CHAT_BODY = {
    "model": "llama3.2",
    "created_at": "2026-11-26T12:00:00Z",
    "message": {"role": "assistant", "content": "Hello there, how can I help?"},
    "done_reason": "stop",
    "done": True,
    "total_duration": 182_000_000,
    "load_duration": 1_000_000,
    "prompt_eval_count": 12,
    "prompt_eval_duration": 21_000_000,
    "eval_count": 8,
    "eval_duration": 160_000_000,
}
_GENERATE_BODY = {
    **{k: v for k, v in CHAT_BODY.items() if k != "message"},
    "response": "Hello there, how can I help?",
}
_OPENAI_BODY = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1795700000,
    "model": "llama3.2",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello there, how can I help?"},
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 12, "completion_tokens": 8, "total_tokens": 20},
}
_MODEL = {
    "name": "llama3.2:latest",
    "model": "llama3.2:latest",
    "modified_at": "2026-05-04T17:37:44.706015396-07:00",
    "size": 2019393189,
    "digest": "a80c4f17acd55265feec403c7aef86be0c25983ab279d83f3bcd3abbcb5b8b72",
    "details": {
        "parent_model": "",
        "format": "gguf",
        "family": "llama",
        "families": ["llama"],
        "parameter_size": "3.2B",
        "quantization_level": "Q4_K_M",
    },
}
_SHOW_BODY = {
    "modelfile": "FROM llama3.2",
    "parameters": "",
    "template": "{{ .Prompt }}",
    "details": _MODEL["details"],
    "model_info": {"general.architecture": "llama", "llama.context_length": 131072},
    "capabilities": ["completion", "tools"],
}
_ROUTES = {
    "/api/chat": CHAT_BODY,
    "/api/generate": _GENERATE_BODY,
    "/api/tags": {"models": [_MODEL]},
    # Loaded, as on a busy node: the gateway routes to it warm.
    "/api/ps": {
        "models": [
            {
                **_MODEL,
                "expires_at": "2318-01-01T00:00:00Z",
                "size_vram": 2019393189,
                "context_length": 4096,
            }
        ]
    },
    "/api/show": _SHOW_BODY,
    "/api/version": {"version": "0.13.0"},
    "/v1/chat/completions": _OPENAI_BODY,
}


def _nginx_string(value: object) -> str:
    text = json.dumps(value, separators=(",", ":"))
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def nginx_config(port: int, scratch: Path) -> str:
    """One worker, keep-alive forever, no access log: a canned answer per route."""
    locations = "\n".join(
        f"    location = {path} {{ default_type application/json;"
        f" return 200 {_nginx_string(body)}; }}"
        for path, body in _ROUTES.items()
    )
    return f"""
worker_processes 1;
daemon off;
error_log {scratch}/nginx-error.log warn;
pid {scratch}/nginx.pid;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  client_body_temp_path {scratch}/body;
  proxy_temp_path {scratch}/proxy;
  fastcgi_temp_path {scratch}/fastcgi;
  uwsgi_temp_path {scratch}/uwsgi;
  scgi_temp_path {scratch}/scgi;
  server {{
    listen 127.0.0.1:{port};
    client_body_buffer_size 1m;
{locations}
  }}
}}
"""


@contextmanager
def nginx_stub(scratch: Path) -> Iterator[tuple[str, int]]:
    """Start nginx on a free port; yield its URL and pid."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        raise RuntimeError("nginx is not installed (apt-get install nginx-light)")
    port = free_port()
    config = scratch / "nginx.conf"
    config.write_text(nginx_config(port, scratch))
    with (scratch / "nginx.log").open("wb") as log:
        process = subprocess.Popen(
            [nginx, "-c", str(config), "-p", str(scratch)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_port(port, process)
        yield f"http://127.0.0.1:{port}", process.pid
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
