"""nz-mock-ollama: a small, faithful fake of the Ollama HTTP API.

Run it with `nz-mock-ollama --port 0` (it prints the URL), or in-process with
`async with MockServer(MockConfig(...)) as server: ...`. Tests steer it through `/_mock/*`.
"""

from nz_mock_ollama.app import create_app
from nz_mock_ollama.config import DEFAULT_MODELS, MockConfig
from nz_mock_ollama.faults import FaultSpec
from nz_mock_ollama.node import NodeSettings
from nz_mock_ollama.server import MockServer, serve

__all__ = [
    "DEFAULT_MODELS",
    "FaultSpec",
    "MockConfig",
    "MockServer",
    "NodeSettings",
    "create_app",
    "serve",
]
