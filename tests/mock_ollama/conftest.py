"""Fixtures: a real `nz-mock-ollama` process on a free port, reset before each test.

The session mock streams unpaced (`--token-rate 0`) so tests are fast; a test that needs
pacing sets it through `POST /_mock/config`, and the reset restores it.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import httpx
import ollama
import pytest

from tests.processes import MockProcess


@pytest.fixture(scope="session")
def _http_session(mock_session: MockProcess) -> Iterator[httpx.Client]:
    # Clients are shared: building one loads a TLS context (~50 ms), too slow per test.
    with httpx.Client(base_url=mock_session.url, timeout=10) as client:
        yield client


@pytest.fixture(scope="session")
def _ollama_session(mock_session: MockProcess) -> Iterator[ollama.Client]:
    with ollama.Client(host=mock_session.url, timeout=10) as client:
        yield client


@pytest.fixture
def mock(mock_session: MockProcess, _http_session: httpx.Client) -> MockProcess:
    """The session mock, reset to its startup state for this test."""
    # A test that failed mid-way may have left the mock refusing connections for a moment:
    # wait until a new connection is accepted, so one failure does not cascade.
    address = httpx.URL(mock_session.url)
    deadline = time.monotonic() + 5
    while True:
        try:
            socket.create_connection((address.host, address.port or 80), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    _http_session.post("/_mock/reset").raise_for_status()
    return mock_session


@pytest.fixture
def http(mock: MockProcess, _http_session: httpx.Client) -> httpx.Client:
    """A raw HTTP client for byte-level checks (against a freshly reset mock)."""
    return _http_session


@pytest.fixture
def client(mock: MockProcess, _ollama_session: ollama.Client) -> ollama.Client:
    """The real ollama-python client pointed at the freshly reset mock."""
    return _ollama_session
