"""The models the mock pretends to have: what each one looks like, and the mutable list.

A model is described entirely by its name: family, size, context length and embedding
dimension are inferred from substrings and the tag (`qwen2.5:7b` → 7B), so `--models` and
`/_mock/models` need nothing but names. Lookup follows Ollama: case-insensitive, `:latest`
when no tag, `library/` and `registry.ollama.ai/` prefixes ignored.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from nz_mock_ollama import gojson
from nz_mock_ollama.timestamps import rfc3339_nano

__all__ = [
    "Catalogue",
    "ModelEntry",
    "lookup_key",
    "model_from_name",
    "with_default_tag",
]

# 2025-05-05T00:37:44.706015396Z: a fixed "pulled at" so /api/tags is reproducible.
_BASE_MODIFIED_NS = 1_746_405_464_706_015_396
_DAY_NS = 86_400 * 1_000_000_000


@dataclass(frozen=True, slots=True)
class _Family:
    match: str
    architecture: str
    parameters: int
    context_length: int
    embedding_length: int
    embedding: bool = False
    thinking: bool = False


# First match wins, so the specific names come before the generic ones ("qwen3" before "qwen").
_FAMILIES: tuple[_Family, ...] = (
    _Family("minilm", "bert", 22_565_760, 512, 384, embedding=True),
    _Family("nomic", "nomic-bert", 136_727_040, 2048, 768, embedding=True),
    _Family("mxbai", "bert", 334_094_336, 512, 1024, embedding=True),
    _Family("bge", "bert", 566_703_104, 8192, 1024, embedding=True),
    _Family("embed", "bert", 136_727_040, 2048, 768, embedding=True),
    _Family("qwen3", "qwen3", 8_190_735_360, 40960, 4096, thinking=True),
    _Family("deepseek-r1", "qwen2", 7_615_616_512, 131072, 3584, thinking=True),
    _Family("gpt-oss", "gptoss", 20_914_757_184, 131072, 2880, thinking=True),
    _Family("qwen", "qwen2", 7_615_616_512, 32768, 3584),
    _Family("mistral", "llama", 7_248_023_552, 32768, 4096),
    _Family("gemma", "gemma3", 4_300_079_472, 131072, 2560),
    _Family("phi", "phi3", 3_821_079_552, 131072, 3072),
    _Family("llama", "llama", 3_212_749_888, 131072, 3072),
)
_FALLBACK = _Family("", "llama", 1_235_814_432, 131072, 2048)

_TAG_SIZE = re.compile(r"^(\d+(?:\.\d+)?)([bm])(?:[-_.].*)?$")
_QUANTS = ("q4_0", "q4_k_m", "q5_k_m", "q6_k", "q8_0", "fp16", "f16", "bf16")
_BITS_PER_WEIGHT = {"Q4_0": 4.5, "Q4_K_M": 4.85, "Q5_K_M": 5.7, "Q6_K": 6.6, "Q8_0": 8.5}


def with_default_tag(name: str) -> str:
    """`llama3.2` → `llama3.2:latest`; a name that has a tag is returned unchanged."""
    name = name.strip()
    if name and ":" not in name.rsplit("/", 1)[-1]:
        return f"{name}:latest"
    return name


def lookup_key(name: str) -> str:
    """The case-insensitive key two spellings of the same model share."""
    key = with_default_tag(name).lower()
    for prefix in ("registry.ollama.ai/", "library/"):
        key = key.removeprefix(prefix)
    return key


def _parameter_size(count: int) -> str:
    if count >= 1_000_000_000:
        return f"{count / 1_000_000_000:.1f}B"
    return f"{round(count / 1_000_000)}M"


@dataclass(frozen=True, slots=True)
class ModelEntry:
    """One installed model, with everything the discovery endpoints print about it."""

    name: str
    architecture: str
    parameter_count: int
    quantization_level: str
    size: int
    digest: str
    modified_at_ns: int
    context_length: int
    embedding_length: int
    embedding: bool
    thinking: bool

    @property
    def capabilities(self) -> list[str]:
        """What `/api/show` advertises; chat and generate refuse what is not listed."""
        if self.embedding:
            return ["embedding"]
        return ["completion", "tools", "thinking"] if self.thinking else ["completion", "tools"]

    def details(self) -> dict[str, Any]:
        """The `details` object shared by tags, ps and show."""
        return {
            "parent_model": "",
            "format": "gguf",
            "family": self.architecture,
            "families": [self.architecture],
            "parameter_size": _parameter_size(self.parameter_count),
            "quantization_level": self.quantization_level,
        }

    def tag_entry(self, offset_minutes: int) -> dict[str, Any]:
        """The object `/api/tags` lists for this model."""
        return {
            "name": self.name,
            "model": self.name,
            "modified_at": rfc3339_nano(self.modified_at_ns, offset_minutes),
            "size": self.size,
            "digest": self.digest,
            "details": self.details(),
        }

    def model_info(self) -> dict[str, Any]:
        """GGUF metadata as `/api/show` prints it under `model_info`."""
        arch = self.architecture
        return {
            "general.architecture": arch,
            "general.basename": self.name.split(":", 1)[0].rsplit("/", 1)[-1],
            "general.file_type": 1 if self.quantization_level == "F16" else 15,
            "general.parameter_count": self.parameter_count,
            "general.quantization_version": 2,
            f"{arch}.context_length": self.context_length,
            f"{arch}.embedding_length": self.embedding_length,
            f"{arch}.block_count": 12 if self.embedding else 28,
            f"{arch}.attention.head_count": 12 if self.embedding else 24,
            "tokenizer.ggml.model": "bert" if self.embedding else "gpt2",
        }

    def show(self, offset_minutes: int) -> dict[str, Any]:
        """The `/api/show` body. `model_info` is always present: ollama-python requires it."""
        if self.embedding:
            template, parameters = (
                "{{ .Prompt }}",
                f"num_ctx                        {self.context_length}",
            )
        else:
            template = (
                "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n"
                "{{ .Content }}<|eot_id|>{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n"
            )
            parameters = 'stop                           "<|eot_id|>"'
        modelfile = (
            '# Modelfile generated by "ollama show"\n'
            f"# To build a new Modelfile based on this, replace FROM with:\n# FROM {self.name}\n\n"
            f"FROM /root/.ollama/models/blobs/sha256-{self.digest}\n"
            f'TEMPLATE """{template}"""\nPARAMETER {parameters}\n'
        )
        return {
            "license": "Mock model licence: for tests and demos only.",
            "modelfile": modelfile,
            "parameters": parameters,
            "template": template,
            "details": self.details(),
            "model_info": self.model_info(),
            "capabilities": self.capabilities,
            "modified_at": rfc3339_nano(self.modified_at_ns, offset_minutes),
        }

    def renamed(self, name: str, modified_at_ns: int) -> ModelEntry:
        """A copy under another name (what `/api/copy` and `/api/create` produce)."""
        return model_from_name(name, modified_at_ns, like=self)


def model_from_name(
    name: str, modified_at_ns: int, *, like: ModelEntry | None = None
) -> ModelEntry:
    """Describe a model from its name alone (or copy the shape of `like`)."""
    name = with_default_tag(name)
    digest = hashlib.sha256(name.encode()).hexdigest()
    if like is not None:
        return ModelEntry(
            name=name,
            architecture=like.architecture,
            parameter_count=like.parameter_count,
            quantization_level=like.quantization_level,
            size=like.size,
            digest=digest,
            modified_at_ns=modified_at_ns,
            context_length=like.context_length,
            embedding_length=like.embedding_length,
            embedding=like.embedding,
            thinking=like.thinking,
        )
    lowered = name.lower()
    family = next((f for f in _FAMILIES if f.match in lowered), _FALLBACK)
    tag = lowered.rsplit(":", 1)[-1]
    parameters = family.parameters
    if sized := _TAG_SIZE.match(tag):
        unit = 1_000_000_000 if sized.group(2) == "b" else 1_000_000
        parameters = int(float(sized.group(1)) * unit)
    quant = next((q for q in _QUANTS if q in tag), None)
    if quant is None:
        quantization = "F16" if family.embedding else "Q4_K_M"
    else:
        quantization = "F16" if quant in {"fp16", "f16", "bf16"} else quant.upper()
    bits = _BITS_PER_WEIGHT.get(quantization, 16.0)
    return ModelEntry(
        name=name,
        architecture=family.architecture,
        parameter_count=parameters,
        quantization_level=quantization,
        size=int(parameters * bits / 8) + 1_048_576,
        digest=digest,
        modified_at_ns=modified_at_ns,
        context_length=family.context_length,
        embedding_length=family.embedding_length,
        embedding=family.embedding,
        thinking=family.thinking,
    )


class Catalogue:
    """The mutable set of installed models; `/api/tags` is cached until the set changes."""

    def __init__(self, entries: Iterable[ModelEntry], offset_minutes: int) -> None:
        self._offset = offset_minutes
        self._entries: dict[str, ModelEntry] = {}
        self._tags_body: bytes | None = None
        self.replace_all(entries)

    @classmethod
    def from_names(cls, names: Iterable[str], offset_minutes: int) -> Catalogue:
        """The startup list: the first name is the most recently "pulled"."""
        entries = (
            model_from_name(name, _BASE_MODIFIED_NS - i * _DAY_NS - i * 7_919)
            for i, name in enumerate(names)
        )
        return cls(entries, offset_minutes)

    def get(self, name: str) -> ModelEntry | None:
        """The model a request names, or None."""
        return self._entries.get(lookup_key(name))

    def add(self, entry: ModelEntry) -> None:
        """Install (or overwrite) a model."""
        self._entries[lookup_key(entry.name)] = entry
        self._tags_body = None

    def remove(self, name: str) -> bool:
        """Delete a model; False when it was not installed."""
        found = self._entries.pop(lookup_key(name), None) is not None
        self._tags_body = None
        return found

    def replace_all(self, entries: Iterable[ModelEntry]) -> None:
        """Swap the whole set."""
        self._entries = {lookup_key(e.name): e for e in entries}
        self._tags_body = None

    def entries(self) -> list[ModelEntry]:
        """Installed models, newest `modified_at` first (the order `/api/tags` uses)."""
        return sorted(self._entries.values(), key=lambda e: e.modified_at_ns, reverse=True)

    def tags_body(self) -> bytes:
        """The `/api/tags` body; discovery polls it, so it is built once per change."""
        if self._tags_body is None:
            models = [e.tag_entry(self._offset) for e in self.entries()]
            self._tags_body = gojson.dumps_bytes({"models": models})
        return self._tags_body
