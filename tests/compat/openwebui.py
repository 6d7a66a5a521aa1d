"""Open WebUI as a process, and a client that drives it the way its browser page does.

:func:`running_open_webui` starts ``open-webui serve`` from the throwaway environment
(:mod:`tests.compat.install`) with ``OLLAMA_BASE_URL`` at the gateway and nothing that
reaches the internet. :class:`WebUI` is a signed-in user over its HTTP API: the admin
calls that connect it to the gateway, the page's model list, a streamed completion,
a message as the chat page sends it (:mod:`tests.compat.session`), a document upload.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.compat.install import Installed
from tests.compat.session import BrowserSession
from tests.processes import free_port
from tests.sse import SseParser

STARTUP_TIMEOUT_S = 240.0


@dataclass(frozen=True)
class OpenWebUIProcess:
    url: str
    process: subprocess.Popen[bytes]
    log: Path
    started_in_s: float

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def running_open_webui(
    installed: Installed, workdir: Path, gateway_url: str
) -> Iterator[OpenWebUIProcess]:
    """``open-webui serve`` on a free port, its data in ``workdir``, until the block ends."""
    port = free_port()
    data = workdir / "data"
    data.mkdir(parents=True, exist_ok=True)
    env = {
        "PATH": f"{installed.bin}:/usr/bin:/bin",
        "HOME": str(workdir),
        "DATA_DIR": str(data),
        "WEBUI_SECRET_KEY": "compat-" + uuid.uuid4().hex,
        "OLLAMA_BASE_URL": gateway_url,
        # Documents are embedded by the gateway's models, not a local one it would fetch.
        "RAG_EMBEDDING_ENGINE": "ollama",
        "RAG_EMBEDDING_MODEL": "all-minilm",
        "RAG_OLLAMA_BASE_URL": gateway_url,
        "ENABLE_OPENAI_API": "false",
        "OFFLINE_MODE": "true",
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
    }
    log = workdir / "open-webui.log"
    started = time.monotonic()
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [
                str(installed.bin / "open-webui"),
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=workdir,
            start_new_session=True,  # its workers die with its group
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(process, url, log)
        yield OpenWebUIProcess(url, process, log, time.monotonic() - started)
    finally:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _wait_until_up(process: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"open-webui exited with {process.returncode}: {log.read_text()}")
        with suppress(httpx.HTTPError):
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        time.sleep(0.5)
    raise RuntimeError(f"open-webui did not start in {STARTUP_TIMEOUT_S} s: {log.read_text()}")


# Open WebUI's admin API for its Ollama connection and its embedding engine (0.12.4:
# routers/ollama.py ``update_config``, routers/retrieval.py ``update_embedding_config``).
CONNECTION_PATH = "/ollama/config/update"
EMBEDDING_PATH = "/api/v1/retrieval/embedding/update"


def connection_settings(gateway_url: str, key: str) -> dict[str, Any]:
    """The Ollama connection: the gateway, with the key as its bearer token."""
    return {
        "ENABLE_OLLAMA_API": True,
        "OLLAMA_BASE_URLS": [gateway_url],
        "OLLAMA_API_CONFIGS": {"0": {"key": key}},
    }


def embedding_settings(gateway_url: str, key: str) -> dict[str, Any]:
    """Documents' embeddings: Ollama's ``/api/embed`` through the gateway, its own key."""
    return {
        "RAG_EMBEDDING_ENGINE": "ollama",
        "RAG_EMBEDDING_MODEL": "all-minilm",
        "ollama_config": {"url": gateway_url, "key": key},
    }


@dataclass
class Sent:
    """A message as the chat page sent it, once its answer and tasks are over."""

    chat_id: str
    message_id: str
    deltas: list[str]  # the answer as it streamed
    error: str | None  # what the page shows in place of an answer
    titles: list[str]


class WebUI:
    """One signed-in user of Open WebUI."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self.token = token
        self.http = httpx.AsyncClient(
            base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60
        )

    @classmethod
    async def sign_up(cls, url: str, name: str, email: str, password: str) -> WebUI:
        """The first account is the admin, as on a fresh install."""
        async with httpx.AsyncClient(base_url=url, timeout=30) as anonymous:
            answer = await anonymous.post(
                "/api/v1/auths/signup", json={"name": name, "email": email, "password": password}
            )
        answer.raise_for_status()
        return cls(url, answer.json()["token"])

    @staticmethod
    async def sign_in(url: str, email: str, password: str) -> httpx.Response:
        async with httpx.AsyncClient(base_url=url, timeout=30) as anonymous:
            return await anonymous.post(
                "/api/v1/auths/signin", json={"email": email, "password": password}
            )

    async def close(self) -> None:
        await self.http.aclose()

    async def connect(self, gateway_url: str, key: str) -> None:
        """What an admin sets in Admin Settings: the Ollama connection's key (chats,
        models) and the embedding engine's (documents); Open WebUI keeps them apart."""
        connection = await self.http.post(
            CONNECTION_PATH, json=connection_settings(gateway_url, key)
        )
        connection.raise_for_status()
        embedding = await self.http.post(EMBEDDING_PATH, json=embedding_settings(gateway_url, key))
        embedding.raise_for_status()

    async def verify(self, gateway_url: str, key: str) -> httpx.Response:
        """The connection form's check button."""
        return await self.http.post("/ollama/verify", json={"url": gateway_url, "key": key})

    async def models(self) -> list[str]:
        """The model picker, as a page load fetches it (past Open WebUI's 1 s cache)."""
        answer = await self.http.get("/api/models", params={"refresh": "true"})
        answer.raise_for_status()
        return [model["id"] for model in answer.json()["data"]]

    async def stream(self, model: str, text: str) -> tuple[httpx.Response, list[str]]:
        """A streamed completion through Open WebUI's API: the response and its deltas."""
        body = {"model": model, "stream": True, "messages": [{"role": "user", "content": text}]}
        async with self.http.stream("POST", "/api/chat/completions", json=body) as answer:
            raw = await answer.aread()
        if answer.status_code != 200:
            return answer, []
        chunks = [json.loads(data) for data in SseParser().feed(raw) if data != "[DONE]"]
        choices = [choice for chunk in chunks for choice in chunk.get("choices", [])]
        return answer, [c["delta"]["content"] for c in choices if c.get("delta", {}).get("content")]

    async def send(self, tab: BrowserSession, model: str, text: str) -> Sent:
        """The first message of a new chat, exactly as the chat page sends it, waited
        for until Open WebUI reports the chat idle (its title may still be coming)."""
        answer_id, question_id = str(uuid.uuid4()), str(uuid.uuid4())
        body: dict[str, Any] = {
            "stream": True,
            "model": model,
            "messages": [{"role": "user", "content": text}],
            "params": {},
            "features": {
                "voice": False,
                "image_generation": False,
                "code_interpreter": False,
                "web_search": False,
                "memory": True,
            },
            "variables": {},
            "session_id": tab.sid,
            "id": answer_id,
            "parent_id": None,
            "user_message": {
                "id": question_id,
                "parentId": None,
                "childrenIds": [answer_id],
                "role": "user",
                "content": text,
                "timestamp": int(time.time()),
                "models": [model],
            },
            "background_tasks": {
                "title_generation": True,
                "tags_generation": True,
                "follow_up_generation": True,
            },
        }
        accepted = await self.http.post("/api/chat/completions", json=body)
        accepted.raise_for_status()
        chat_id = accepted.json()["chat_id"]
        async with asyncio.timeout(60):
            await tab.wait_for(
                lambda: {"active": False, "folder_id": None} in tab.of(chat_id, "chat:active")
            )
        deltas = [
            d["delta"]
            for d in tab.of(chat_id, "response:completion")
            if isinstance(d, dict) and d.get("type") == "response.output_text.delta"
        ]
        errors = [d["error"]["content"] for d in tab.of(chat_id, "chat:message:error")]
        return Sent(
            chat_id, answer_id, deltas, errors[0] if errors else None, tab.of(chat_id, "chat:title")
        )

    async def upload(self, name: str, text: str) -> str:
        """A document, as the chat's paperclip uploads it (processed in the background)."""
        files = {"file": (name, text.encode(), "text/plain")}
        answer = await self.http.post("/api/v1/files/", files=files)
        answer.raise_for_status()
        file_id: str = answer.json()["id"]
        return file_id

    async def processed(self, file_id: str) -> str:
        """The document's processing status once it is over (callers bound the wait)."""
        while True:
            answer = await self.http.get(f"/api/v1/files/{file_id}/process/status")
            status: str = answer.json()["status"]
            if status not in ("pending", "processing"):
                return status
            await asyncio.sleep(0.2)
