"""The mock's startup settings: one frozen value built by the CLI (or a test) and passed down."""

from __future__ import annotations

from dataclasses import dataclass, field

from nz_mock_ollama.faults import FaultSpec
from nz_mock_ollama.node import NodeSettings

__all__ = ["DEFAULT_MODELS", "MockConfig"]

# Chat models first (newest first in /api/tags), then the embedding models. `acme/coder:1b`
# is namespaced so tests cover a `/` inside a model id; `qwen3:8b` is the one thinking model.
DEFAULT_MODELS: tuple[str, ...] = (
    "llama3.2:latest",
    "qwen2.5:7b",
    "qwen3:8b",
    "mistral:latest",
    "acme/coder:1b",
    "all-minilm:latest",
    "nomic-embed-text:latest",
)


@dataclass(frozen=True, slots=True)
class MockConfig:
    """Everything the mock needs to start; runtime changes go through `/_mock/*` instead.

    `token_rate` is tokens per second between streamed frames (0 streams as fast as the
    socket takes them); `response_tokens` is the length of an answer before `num_predict`
    or a stop sequence cuts it. `utc_offset_minutes` is the "local" offset printed in
    `modified_at`/`expires_at`, fixed so the output does not depend on the host's TZ.
    `node` is how it behaves as an Ollama node (slots, loaded-model cap, load delays).
    """

    models: tuple[str, ...] = DEFAULT_MODELS
    version: str = "0.33.0"
    token_rate: float = 20.0
    response_tokens: int = 24
    utc_offset_minutes: int = -7 * 60
    faults: FaultSpec = field(default_factory=FaultSpec)
    refuse_connections_s: float = 0.0
    node: NodeSettings = field(default_factory=NodeSettings)

    def __post_init__(self) -> None:
        if self.token_rate < 0:
            raise ValueError("token_rate must be >= 0")
        if self.response_tokens < 1:
            raise ValueError("response_tokens must be >= 1")
        if self.refuse_connections_s < 0:
            raise ValueError("refuse_connections_s must be >= 0")
