"""The Docker files (docker/, .dockerignore), checked where no Docker engine runs.

Nothing can be built or started here, so each part is checked the way it can be:

- the compose files are parsed (with compose's variable interpolation) and held against
  the workspace: build contexts and Dockerfiles on disk, every gateway variable a real
  setting that :func:`load_settings` accepts, every command a console script and CLI
  subcommand that exists, and the network rule of SPEC §3 (only the gateway is reachable);
- the Dockerfiles are parsed: stages, pinned bases, a fixed non-root user, the health
  check, and every ``COPY`` source present in the build context that .dockerignore leaves;
- their builder stages are *run* natively (WORKDIR, ENV, COPY, RUN) on a copy of that
  build context, so uv really installs the locked workspace and the result works on its
  own (``migrate`` from the wheels, the playground page, the mock alone);
- demo.sh runs against a fake ``docker`` that hands ``exec gateway neuronetz-gateway …``
  to the real CLI, with a real gateway and mock Ollama behind the port it polls, and the
  curl commands it prints are run.

``docker compose config`` and shellcheck run too when they are installed.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import posixpath
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

from nz_core.migrations import upgrade
from nz_mock_ollama.cli import parse_args as parse_mock_args
from nz_proxy.settings import Settings, load_settings
from tests.processes import GatewayProcess, free_port, run_mock, start_gateway, stop_gateway

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
PROD = DOCKER / "docker-compose.yml"
DEMO = DOCKER / "docker-compose.demo.yml"
COMPOSE_FILES = [PROD, DEMO]
GATEWAY_DOCKERFILE = DOCKER / "Dockerfile"
MOCK_DOCKERFILE = DOCKER / "Dockerfile.mock"
DOCKERFILES = [GATEWAY_DOCKERFILE, MOCK_DOCKERFILE]
DEMO_SH = DOCKER / "demo.sh"
ENV_EXAMPLE = DOCKER / ".env.example"

SETTINGS = frozenset(name.upper() for name in Settings.__struct_fields__)
# Variables the gateway's containers get that are not settings. None so far: adding one
# here must be a decision, not an accident.
NOT_SETTINGS: frozenset[str] = frozenset()
# Runtime-stage ENV of the images that is not a setting.
IMAGE_RUNTIME_VARIABLES = frozenset(
    {"PATH", "VIRTUAL_ENV", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE"}
)
# What each stack must hold, so that no check below passes on an empty file.
EXPECTED_SERVICES = {
    PROD: {"postgres", "redis", "ollama", "migrate", "gateway"},
    DEMO: {"postgres", "redis", "mock-ollama", "migrate", "gateway"},
}
GATEWAY_IMAGE_SERVICES = ("migrate", "gateway")
# One-shot helpers allowed on a network that is not internal: they must publish nothing,
# run only when asked (a compose profile) and share no network with another service.
EGRESS_HELPERS = frozenset({"ollama-pull"})
# The ports the backends listen on inside their containers.
BACKEND_PORTS = {"postgres": 5432, "redis": 6379, "ollama": 11434}
DEMO_MODEL = "llama3.2"


# --- compose: loading and interpolation ----------------------------------------------

_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>\w+)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}|(?P<bare>\w+))"
)


class MissingVariable(KeyError):
    """A ``${VAR:?message}`` whose variable is unset."""


def interpolate(
    text: str, env: Mapping[str, str], seen: list[tuple[str, str | None]] | None = None
) -> str:
    """Compose's interpolation: ``$$``, ``$VAR``, ``${VAR}``, ``${VAR[:]-default}``,
    ``${VAR[:]?error}``, ``${VAR[:]+alternative}``."""

    def replace(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["braced"] or match["bare"]
        op, arg = match["op"], match["arg"] or ""
        if seen is not None:
            seen.append((name, op))
        value = env.get(name)
        missing = value is None or (op is not None and op.startswith(":") and value == "")
        kind = op[-1] if op else None
        if kind == "-":
            return arg if missing else str(value)
        if kind == "?":
            if missing:
                raise MissingVariable(f"{name}: {arg}")
            return str(value)
        if kind == "+":
            return "" if missing else arg
        return value or ""

    return _VARIABLE.sub(replace, text)


def resolve(node: Any, env: Mapping[str, str], seen: list[tuple[str, str | None]] | None) -> Any:
    if isinstance(node, str):
        return interpolate(node, env, seen)
    if isinstance(node, list):
        return [resolve(item, env, seen) for item in node]
    if isinstance(node, dict):
        return {key: resolve(value, env, seen) for key, value in node.items()}
    return node


def env_example() -> dict[str, str]:
    """The variables docker/.env.example sets (uncommented) and those it documents."""
    found: dict[str, str] = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if match := re.fullmatch(r"(#\s*)?([A-Z][A-Z0-9_]*)=(.*)", line.strip()):
            found[match[2]] = "required" if match[1] is None else "optional"
    return found


# URL-safe stand-ins for the secrets docker/.env holds.
SAMPLE_ENV = {
    name: f"{name.lower().replace('_', '')}0123456789abcdef"
    for name, kind in env_example().items()
    if kind == "required"
}


@functools.cache
def raw_compose(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), path
    return data


@functools.cache
def compose(path: Path) -> dict[str, Any]:
    """The compose file as compose sees it with docker/.env filled in."""
    resolved = resolve(raw_compose(path), SAMPLE_ENV, None)
    assert isinstance(resolved, dict)
    return resolved


def variables(path: Path) -> list[tuple[str, str | None]]:
    seen: list[tuple[str, str | None]] = []
    resolve(raw_compose(path), SAMPLE_ENV, seen)
    return seen


def services(path: Path) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose(path)["services"]
    return found


def networks_of(service: Mapping[str, Any]) -> list[str]:
    return list(service.get("networks") or ["default"])


def is_internal(path: Path, network: str) -> bool:
    definition = (compose(path).get("networks") or {}).get(network) or {}
    return definition.get("internal") is True


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {
        key: "" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
        for key, value in env.items()
    }


def as_argv(value: str | list[str] | None) -> list[str] | None:
    if value is None:
        return None
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def build_of(path: Path, service: Mapping[str, Any]) -> tuple[Path, Path] | None:
    """(context, Dockerfile) of a service that is built, resolved like compose does."""
    build = service.get("build")
    if build is None:
        return None
    if isinstance(build, str):
        build = {"context": build}
    context = (path.parent / build.get("context", ".")).resolve()
    return context, (context / build.get("dockerfile", "Dockerfile")).resolve()


def published_ports(service: Mapping[str, Any]) -> list[tuple[str, str, int]]:
    """(host address, host port, container port) of each published port."""
    ports = []
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            ports.append(
                (
                    str(entry.get("host_ip", "")),
                    str(entry.get("published", "")),
                    int(entry["target"]),
                )
            )
            continue
        parts = str(entry).split("/")[0].split(":")
        host_ip = parts[0] if len(parts) == 3 else ""
        host_port = parts[-2] if len(parts) >= 2 else ""
        ports.append((host_ip, host_port, int(parts[-1])))
    return ports


# --- Dockerfiles ---------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    flags: tuple[str, ...]
    value: str

    def flag(self, name: str) -> str | None:
        for flag in self.flags:
            if flag.startswith(f"--{name}="):
                return flag.split("=", 1)[1]
        return None


@dataclass(frozen=True)
class Stage:
    base: str
    name: str | None
    instructions: tuple[Instruction, ...]

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None

    def env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        for instruction in self.all("ENV"):
            for token in shlex.split(instruction.value):
                name, sep, value = token.partition("=")
                assert sep, f"use ENV NAME=value, not {instruction.value!r}"
                env[name] = value
        return env


def _logical_lines(text: str) -> Iterator[str]:
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue  # comments (also inside a continued instruction) and blank lines
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        yield (pending + stripped).strip()
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"


@functools.cache
def stages(path: Path) -> tuple[Stage, ...]:
    args: dict[str, str] = {}
    found: list[Stage] = []
    current: list[Instruction] | None = None
    base, name = "", None
    for line in _logical_lines(path.read_text()):
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        flags = []
        while rest.startswith("--"):
            flag, _, rest = rest.partition(" ")
            flags.append(flag)
            rest = rest.strip()
        if keyword == "ARG" and current is None:
            arg, _, default = rest.partition("=")
            args[arg] = default
            continue
        if keyword == "FROM":
            if current is not None:
                found.append(Stage(base, name, tuple(current)))
            words = interpolate(rest, args).split()
            base = words[0]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            current = []
            continue
        assert current is not None, f"{keyword} before the first FROM"
        current.append(Instruction(keyword, tuple(flags), rest))
    assert current is not None, f"{path} has no FROM"
    found.append(Stage(base, name, tuple(current)))
    return tuple(found)


def final_stage(path: Path) -> Stage:
    return stages(path)[-1]


def exec_form(instruction: Instruction | None) -> list[str]:
    """The JSON (exec) form of ENTRYPOINT/CMD/HEALTHCHECK CMD: no shell between docker
    and the process, so SIGTERM reaches it."""
    assert instruction is not None
    value = instruction.value
    if instruction.keyword == "HEALTHCHECK":
        assert value.startswith("CMD "), value
        value = value.removeprefix("CMD ")
    argv = json.loads(value)
    assert isinstance(argv, list), value
    assert all(isinstance(word, str) for word in argv)
    return argv


_PINNED = re.compile(
    r"[\w.\-/]+(:(?!latest\b)[\w.\-]*\d+\.\d+[\w.\-]*)?(@sha256:[0-9a-f]{64})?",
)


def assert_pinned(image: str) -> None:
    """A version tag with at least major.minor (or a digest), never latest."""
    assert ":" in image or "@sha256:" in image, f"{image} has no tag"
    assert _PINNED.fullmatch(image), f"{image} is not pinned to a version"


# --- .dockerignore -------------------------------------------------------------------


def _pattern(text: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(text):
        if text.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif text.startswith("**", i):
            out, i = out + ".*", i + 2
        elif text[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif text[i] == "?":
            out, i = out + "[^/]", i + 1
        elif text[i] == "[":
            end = text.index("]", i)
            out, i = out + text[i : end + 1], end + 1
        else:
            out, i = out + re.escape(text[i]), i + 1
    return re.compile(out)


@functools.cache
def ignore_rules() -> tuple[tuple[bool, str, re.Pattern[str]], ...]:
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        text = posixpath.normpath(line.removeprefix("!").strip()).lstrip("/")
        rules.append((negated, text, _pattern(text)))
    return tuple(rules)


def ignored(relative: str) -> bool:
    """Docker's rule: a pattern matching a path or any of its parents decides; the last
    pattern that matches wins, and ``!`` lets a path back in."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    result = False
    for negated, _, pattern in ignore_rules():
        if any(pattern.fullmatch(prefix) for prefix in prefixes):
            result = not negated
    return result


def _may_hold_exceptions(directory: str) -> bool:
    return any(
        negated and ("**" in text or text.startswith(directory + "/") or text == directory)
        for negated, text, _ in ignore_rules()
    )


def copy_build_context(dest: Path) -> None:
    """What `docker build .` would send from the repository root."""
    for here, dirs, files in os.walk(ROOT):
        base = Path(here).relative_to(ROOT).as_posix()
        base = "" if base == "." else base + "/"
        dirs[:] = [d for d in dirs if not ignored(base + d) or _may_hold_exceptions(base + d)]
        for file in files:
            if not ignored(base + file):
                (dest / base).mkdir(parents=True, exist_ok=True)
                shutil.copy2(Path(here) / file, dest / base / file)


# --- the workspace -------------------------------------------------------------------


@functools.cache
def console_scripts() -> dict[str, str]:
    scripts: dict[str, str] = {}
    for manifest in sorted(ROOT.glob("packages/*/pyproject.toml")):
        project = tomllib.loads(manifest.read_text())["project"]
        scripts.update(project.get("scripts", {}))
    return scripts


@functools.cache
def cli_help(*command: str) -> str:
    """``neuronetz-gateway <command> --help``; fails the test when it does not exist."""
    result = subprocess.run(
        [sys.executable, "-m", "nz_cli", *command, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"neuronetz-gateway {' '.join(command)}: {result.stderr}"
    return result.stdout


def image_commands(
    compose_path: Path, service: Mapping[str, Any]
) -> tuple[list[str], list[str]] | None:
    """(entrypoint, command) of a service built from one of our Dockerfiles."""
    build = build_of(compose_path, service)
    if build is None:
        return None
    final = final_stage(build[1])
    entrypoint = as_argv(service.get("entrypoint")) or exec_form(final.last("ENTRYPOINT"))
    command = as_argv(service.get("command"))
    if command is None:
        command = exec_form(final.last("CMD")) if final.last("CMD") else []
    return entrypoint, command


# === compose files ===================================================================

compose_files = pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)


@compose_files
def test_compose_file_parses_with_the_expected_services(path: Path) -> None:
    assert EXPECTED_SERVICES[path] <= set(services(path))


@compose_files
def test_every_variable_has_a_default_or_is_required_and_documented(path: Path) -> None:
    """A `${VAR}` with neither would be silently empty; every required one is in
    docker/.env.example, and every one the example names is used."""
    seen = variables(path)
    for name, op in seen:
        assert op is not None, f"${{{name}}} has no default and is not required (:?)"
    required = {name for name, op in seen if op in (":?", "?")}
    example = env_example()
    assert required <= {k for k, v in example.items() if v == "required"}
    if path == PROD:
        assert required == {"POSTGRES_PASSWORD", "REDIS_PASSWORD"}
        assert set(example) == {name for name, _ in seen}


def test_production_compose_refuses_to_start_without_its_secrets() -> None:
    for secret in ("POSTGRES_PASSWORD", "REDIS_PASSWORD"):
        env = {k: v for k, v in SAMPLE_ENV.items() if k != secret}
        with pytest.raises(MissingVariable, match=secret):
            resolve(raw_compose(PROD), env, None)


def test_the_secrets_file_is_git_ignored() -> None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    result = subprocess.run(
        ["git", "check-ignore", "-q", "docker/.env"], cwd=ROOT, check=False, timeout=30
    )
    assert result.returncode == 0, "docker/.env (the passwords) must be git-ignored"


@compose_files
def test_services_build_from_files_on_disk_or_pin_their_image(path: Path) -> None:
    declared_volumes = set(compose(path).get("volumes") or {})
    for name, service in services(path).items():
        build = build_of(path, service)
        if build is None:
            assert "image" in service, f"{name}: neither build nor image"
            assert_pinned(service["image"])
        else:
            context, dockerfile = build
            assert context == ROOT, f"{name}: the Dockerfiles are written for the repo root"
            assert dockerfile in {d.resolve() for d in DOCKERFILES}, f"{name}: {dockerfile}"
        for env_file in service.get("env_file") or []:
            file = env_file if isinstance(env_file, str) else env_file["path"]
            assert (path.parent / file).is_file(), f"{name}: env_file {file} is missing"
        for volume in service.get("volumes") or []:
            source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source")
            if source.startswith((".", "/", "~")):
                assert (path.parent / source).exists(), f"{name}: bind source {source}"
            else:
                assert source in declared_volumes, f"{name}: volume {source} is not declared"


@compose_files
def test_only_the_gateway_is_reachable(path: Path) -> None:
    """SPEC §3: Ollama (and the database and Redis) stay on an internal network; the
    gateway is the only ingress."""
    all_services = services(path)
    assert {name for name, s in all_services.items() if s.get("ports")} == {"gateway"}
    for name, service in all_services.items():
        assert "network_mode" not in service, f"{name} must not use network_mode"
        if name == "gateway":
            continue
        nets = networks_of(service)
        if name in EGRESS_HELPERS:
            assert service.get("profiles"), f"{name} must run only when asked"
            others = {n for o, s in all_services.items() if o != name for n in networks_of(s)}
            assert not set(nets) & others, f"{name} shares a network"
            continue
        outside = [n for n in nets if not is_internal(path, n)]
        assert not outside, f"{name} is on non-internal network(s) {outside}"
    gateway_nets = networks_of(all_services["gateway"])
    assert any(is_internal(path, n) for n in gateway_nets)
    public = {n for n in gateway_nets if not is_internal(path, n)}
    assert public, "the gateway needs a network its published port lives on"
    for name, service in all_services.items():
        if name != "gateway":
            assert not public & set(networks_of(service)), f"{name} is on the public network"


@compose_files
def test_the_gateway_is_published_on_loopback_by_default_at_its_listening_port(
    path: Path,
) -> None:
    (host_ip, host_port, target), *more = published_ports(services(path)["gateway"])
    assert not more
    assert host_ip == "127.0.0.1"
    assert host_port == "8080"
    assert target == gateway_settings(path, "gateway").gateway_port
    assert [i.value for i in final_stage(GATEWAY_DOCKERFILE).all("EXPOSE")] == [str(target)]


def gateway_settings(path: Path, name: str) -> Settings:
    """The settings the gateway process in service ``name`` would load: the image's
    ENV, overridden by the compose environment."""
    service = services(path)[name]
    build = build_of(path, service)
    assert build is not None, name
    assert build[1] == GATEWAY_DOCKERFILE.resolve(), name
    image_env = final_stage(GATEWAY_DOCKERFILE).env()
    env = {k: v for k, v in image_env.items() if k in SETTINGS} | environment(service)
    return load_settings(env, env_file=None)


@compose_files
def test_gateway_environment_is_made_of_real_settings_that_load(path: Path) -> None:
    for name in GATEWAY_IMAGE_SERVICES:
        env = environment(services(path)[name])
        unknown = set(env) - SETTINGS - NOT_SETTINGS
        assert not unknown, f"{name}: not settings of the gateway: {sorted(unknown)}"
        gateway_settings(path, name)  # raises SettingsError naming a bad variable


@compose_files
def test_gateway_settings_fit_the_stack(path: Path) -> None:
    settings = gateway_settings(path, "gateway")
    all_services = services(path)
    assert settings.gateway_host == "0.0.0.0"  # reachable from outside its container
    assert settings.database_url.startswith("postgresql+asyncpg://")
    assert settings.redis_url is not None  # several workers and replicas share state
    assert settings.gateway_workers >= 1
    backend = "ollama" if path == PROD else "mock-ollama"
    internal = {n for n in networks_of(all_services["gateway"]) if is_internal(path, n)}
    for url, service, port in (
        (settings.database_url, "postgres", BACKEND_PORTS["postgres"]),
        (settings.redis_url, "redis", BACKEND_PORTS["redis"]),
        (settings.ollama_base_url, backend, backend_port(path, backend)),
    ):
        parts = urlsplit(url)
        assert parts.hostname == service, url
        assert (parts.port or port) == port, url
        assert internal & set(networks_of(all_services[service])), f"cannot reach {service}"
    # The migration upgrades the very database the gateway serves.
    assert gateway_settings(path, "migrate").database_url == settings.database_url
    if path == DEMO:
        assert settings.playground_enabled
        assert settings.model_discovery_refresh_s == 15
    else:
        assert not settings.playground_enabled
        assert settings.log_format == "json"


def backend_port(path: Path, name: str) -> int:
    if name == "ollama":
        return BACKEND_PORTS["ollama"]
    commands = image_commands(path, services(path)[name])
    assert commands is not None
    invocation = parse_mock_args(commands[1])
    assert invocation.host == "0.0.0.0"  # else nothing outside its container reaches it
    return invocation.port


@compose_files
def test_startup_order_migrates_first_and_waits_for_health(path: Path) -> None:
    all_services = services(path)
    gateway_deps = all_services["gateway"]["depends_on"]
    assert gateway_deps["migrate"]["condition"] == "service_completed_successfully"
    assert all_services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name, service in all_services.items():
        for dependency, spec in (service.get("depends_on") or {}).items():
            if spec.get("condition") != "service_healthy":
                continue
            target = all_services[dependency]
            build = build_of(path, target)
            has_check = "test" in (target.get("healthcheck") or {}) or (
                build is not None and final_stage(build[1]).last("HEALTHCHECK") is not None
            )
            assert has_check, f"{name} waits for {dependency} to be healthy; it has no check"


@compose_files
def test_commands_are_console_scripts_and_subcommands_that_exist(path: Path) -> None:
    scripts = console_scripts()
    checked = set()
    for name, service in services(path).items():
        commands = image_commands(path, service)
        if commands is None:
            continue
        entrypoint, command = commands
        assert entrypoint[0] in scripts, f"{name}: {entrypoint[0]} is no console script"
        module, function = scripts[entrypoint[0]].split(":")
        assert callable(getattr(importlib.import_module(module), function))
        if entrypoint[0] == "neuronetz-gateway":
            assert command, name
            cli_help(command[0])
        else:
            parse_mock_args(command)  # argparse exits (fails the test) on a bad flag
        checked.add(name)
    assert {"migrate", "gateway"} <= checked


dockerfiles = pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)


@dockerfiles
def test_dockerfile_is_multi_stage_pinned_and_runs_as_a_fixed_non_root_user(
    dockerfile: Path,
) -> None:
    all_stages = stages(dockerfile)
    assert len(all_stages) >= 2
    names = set()
    for stage in all_stages:
        if stage.base not in names:
            assert_pinned(stage.base)
        for copy in stage.all("COPY"):
            source = copy.flag("from")
            if source is not None and source not in names:
                assert_pinned(source)
        if stage.name:
            names.add(stage.name)
    final = final_stage(dockerfile)
    user = final.last("USER")
    assert user is not None, "the final stage must switch to a non-root user"
    assert re.fullmatch(r"[1-9]\d{3,}:[1-9]\d{3,}", user.value), f"USER {user.value}"
    # The virtualenv comes from a builder on the very same Python image: its
    # interpreter links point at that image's /usr/local/bin/python3.11.
    venv_copies = [c for c in final.all("COPY") if c.flag("from")]
    assert venv_copies
    for copy in venv_copies:
        builder = next(s for s in all_stages if s.name == copy.flag("from"))
        if "/opt/venv" in copy.value:
            assert builder.base == final.base
    assert exec_form(final.last("ENTRYPOINT"))[0] in console_scripts()
    assert final.last("WORKDIR") is not None


@dockerfiles
def test_builder_installs_the_locked_workspace_without_dev_or_editable_packages(
    dockerfile: Path,
) -> None:
    syncs = [i.value for s in stages(dockerfile) for i in s.all("RUN") if "uv sync" in i.value]
    assert syncs
    for command in syncs:
        for flag in ("--locked", "--no-dev", "--no-editable", "--package"):
            assert flag in command, f"{flag} missing in {command}"


@dockerfiles
def test_copy_sources_are_in_the_build_context(dockerfile: Path) -> None:
    copied = 0
    for stage in stages(dockerfile):
        for copy in stage.all("COPY"):
            if copy.flag("from") is not None:
                continue
            *sources, _dest = shlex.split(copy.value)
            for source in sources:
                matches = sorted(ROOT.glob(source.rstrip("/"))) or [ROOT / source]
                for match in matches:
                    assert match.exists(), f"COPY {source}: not in the repository"
                    files = (
                        [match] if match.is_file() else [p for p in match.rglob("*") if p.is_file()]
                    )
                    relative = [p.relative_to(ROOT).as_posix() for p in files]
                    kept = [r for r in relative if not ignored(r)]
                    assert kept, f"COPY {source}: .dockerignore leaves nothing of it"
                    copied += 1
    assert copied


@dockerfiles
def test_image_environment_is_settings_or_runtime(dockerfile: Path) -> None:
    env = final_stage(dockerfile).env()
    assert env.get("PYTHONUNBUFFERED") == "1"
    unknown = set(env) - SETTINGS - IMAGE_RUNTIME_VARIABLES
    assert not unknown, sorted(unknown)
    load_settings({k: v for k, v in env.items() if k in SETTINGS}, env_file=None)


def test_gateway_image_defaults_fit_a_container() -> None:
    final = final_stage(GATEWAY_DOCKERFILE)
    env = final.env()
    settings = load_settings({k: v for k, v in env.items() if k in SETTINGS}, env_file=None)
    assert settings.gateway_host == "0.0.0.0"
    assert settings.log_format == "json"
    assert [i.value for i in final.all("EXPOSE")] == [str(settings.gateway_port)]
    assert exec_form(final.last("ENTRYPOINT")) == ["neuronetz-gateway"]
    assert exec_form(final.last("CMD")) == ["serve"]
    check = exec_form(final.last("HEALTHCHECK"))
    assert check[0] == "python"  # the slim image has no curl
    assert "/healthz" in check[-1]


def test_mock_image_listens_on_all_interfaces_of_its_container() -> None:
    final = final_stage(MOCK_DOCKERFILE)
    assert exec_form(final.last("ENTRYPOINT")) == ["nz-mock-ollama"]
    invocation = parse_mock_args(exec_form(final.last("CMD")))
    assert (invocation.host, invocation.port) == ("0.0.0.0", 11434)
    assert [i.value for i in final.all("EXPOSE")] == ["11434"]


# === .dockerignore ===================================================================


def test_dockerignore_keeps_the_sources_and_drops_everything_else() -> None:
    needed = [
        "pyproject.toml",
        "uv.lock",
        "playground/index.html",
        *(p.relative_to(ROOT).as_posix() for p in ROOT.glob("alembic/**/*.py")),
        "alembic/script.py.mako",
    ]
    needed += [
        file.relative_to(ROOT).as_posix()
        for file in ROOT.glob("packages/*/**/*")
        if file.is_file() and "__pycache__" not in file.parts
    ]
    assert len(needed) > 50
    assert [n for n in needed if ignored(n)] == []
    unwanted = [
        ".git/HEAD",
        ".venv/bin/python",
        "packages/nz-core/.venv/pyvenv.cfg",
        ".env",
        "docker/.env",
        "packages/nz-proxy/.env",
        "neuronetz.db",
        "packages/nz-core/neuronetz.db-wal",
        "packages/nz-core/src/nz_core/__pycache__/keys.cpython-311.pyc",
        "alembic/versions/__pycache__/0001_initial_schema.cpython-311.pyc",
        ".mypy_cache/3.11/x.json",
        ".ruff_cache/CACHEDIR.TAG",
        ".pytest_cache/README.md",
        ".hypothesis/examples/x",
        ".import_linter_cache/x.json",
        "artifacts/report.txt",
        "site/index.html",
        "dist/nz_core-0.1.0-py3-none-any.whl",
        "tests/conftest.py",
        "docs/API.md",
    ]
    assert [u for u in unwanted if not ignored(u)] == []


# === the builder stages, run without Docker ============================================


def run_builder_stage(dockerfile: Path, work: Path) -> Path:
    """Play the stage the runtime copies /opt/venv from: WORKDIR, ENV, COPY from the
    build context, RUN, with the container's paths mapped under ``work``. Returns the
    virtualenv."""
    uv = os.environ.get("UV") or shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not on PATH")
    context = work / "context"
    copy_build_context(context)
    all_stages = stages(dockerfile)
    source = next(
        c.flag("from") for c in final_stage(dockerfile).all("COPY") if "/opt/venv" in c.value
    )
    builder = next(s for s in all_stages if s.name == source)
    root = work / "fs"

    def host(container_path: str) -> Path:
        return root / container_path.lstrip("/")

    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("UV_") and k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")
    }
    env["PATH"] = f"{Path(uv).parent}{os.pathsep}{env.get('PATH', '')}"
    venv = "/opt/venv"
    workdir = "/"
    for instruction in builder.instructions:
        if instruction.keyword == "WORKDIR":
            workdir = posixpath.join(workdir, instruction.value)
            host(workdir).mkdir(parents=True, exist_ok=True)
        elif instruction.keyword == "ENV":
            env.update(Stage("", None, (instruction,)).env())
            venv = env.get("UV_PROJECT_ENVIRONMENT", venv)
            env["UV_PROJECT_ENVIRONMENT"] = str(host(venv))
            env["UV_PYTHON"] = os.path.realpath(sys.executable)  # not the image's path
        elif instruction.keyword == "COPY":
            if instruction.flag("from") is not None:
                continue  # uv itself: the one on this machine stands in
            *sources, dest = shlex.split(instruction.value)
            into_dir = dest.endswith("/") or dest in (".", "./") or len(sources) > 1
            target = host(posixpath.join(workdir, dest))
            for pattern in sources:
                for item in sorted(context.glob(pattern.rstrip("/"))):
                    if item.is_dir():
                        shutil.copytree(item, target, dirs_exist_ok=True)
                    elif into_dir:
                        target.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(item, target / item.name)
                    else:
                        target.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(item, target)
        elif instruction.keyword == "RUN":
            command = re.sub(re.escape(venv) + r"(?=/|\s|$)", str(host(venv)), instruction.value)
            result = subprocess.run(
                ["bash", "-c", command],
                cwd=host(workdir),
                env=env,
                capture_output=True,
                text=True,
                check=False,
                timeout=600,
            )
            assert result.returncode == 0, f"RUN {instruction.value}\n{result.stderr}"
    # The runtime stage gets the virtualenv only: nothing may point back to the sources.
    shutil.rmtree(context)
    shutil.rmtree(host(workdir))
    return host(venv)


def clean_env(**extra: str) -> dict[str, str]:
    keep = ("PATH", "HOME", "LANG", "TMPDIR")
    return {k: v for k, v in os.environ.items() if k in keep} | extra


@pytest.mark.timeout(900)
def test_gateway_builder_installs_a_self_contained_gateway(tmp_path: Path) -> None:
    venv = run_builder_stage(GATEWAY_DOCKERFILE, tmp_path)
    python = venv / "bin" / "python"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for script in ("neuronetz-gateway", "nz-mock-ollama"):
        assert (venv / "bin" / script).is_file()
    # Every file of every package's sources (the .lua scripts, py.typed, …) is installed.
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout.strip()
    )
    for source in ROOT.glob("packages/*/src/*"):
        for file in source.rglob("*"):
            if file.is_file() and "__pycache__" not in file.parts:
                relative = file.relative_to(source.parent)
                assert (site / relative).is_file(), f"{relative} is not in the installed wheel"
    # `docker compose run gateway migrate`: the migrations come from the nz-core wheel.
    database = elsewhere / "gateway.db"
    migrate = subprocess.run(
        [str(venv / "bin" / "neuronetz-gateway"), "migrate"],
        cwd=elsewhere,
        env=clean_env(DATABASE_URL=f"sqlite+aiosqlite:///{database}"),
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert migrate.returncode == 0, migrate.stderr
    assert "(newest)" in migrate.stdout
    # The playground page comes from the nz-proxy wheel, byte for byte.
    probe = subprocess.run(
        [
            str(python),
            "-c",
            "import sys, nz_core, nz_proxy.playground as p;"
            "print(nz_core.__file__); sys.stdout.flush(); sys.stdout.buffer.write(p.page())",
        ],
        cwd=elsewhere,
        env=clean_env(),
        capture_output=True,
        check=False,
        timeout=60,
    )
    assert probe.returncode == 0, probe.stderr
    location, page = probe.stdout.split(b"\n", 1)
    assert Path(location.decode()).resolve().is_relative_to(site.resolve())
    assert page == (ROOT / "playground" / "index.html").read_bytes()


@pytest.mark.timeout(900)
def test_mock_builder_installs_the_mock_alone(tmp_path: Path) -> None:
    venv = run_builder_stage(MOCK_DOCKERFILE, tmp_path)
    result = subprocess.run(
        [str(venv / "bin" / "nz-mock-ollama"), "--help"],
        env=clean_env(),
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    for absent in ("nz_cli", "nz_proxy", "nz_core", "litestar"):
        probe = subprocess.run(
            [str(venv / "bin" / "python"), "-c", f"import {absent}"],
            env=clean_env(),
            capture_output=True,
            check=False,
            timeout=60,
        )
        assert probe.returncode != 0, f"{absent} is in the mock image"


# === demo.sh =========================================================================

FAKE_DOCKER = """#!@PYTHON@
# A stand-in for `docker`: logs every call; `compose -f FILE exec -T gateway
# neuronetz-gateway ARGS` runs the real CLI against FAKE_DOCKER_DATABASE_URL.
import json, os, sys

args = sys.argv[1:]
with open(os.environ["FAKE_DOCKER_LOG"], "a") as log:
    log.write(json.dumps(args) + "\\n")
if args[:2] == ["compose", "version"]:
    print("Docker Compose version v2 (fake)")
    sys.exit(0)
if args[:2] != ["compose", "-f"] or not os.path.isfile(args[2]):
    sys.exit(f"fake docker: unexpected call {args}")
rest = args[3:]
if rest[:1] in (["up"], ["down"], ["ps"], ["logs"]):
    sys.exit(0)
if rest[:4] == ["exec", "-T", "gateway", "neuronetz-gateway"]:
    os.environ["DATABASE_URL"] = os.environ["FAKE_DOCKER_DATABASE_URL"]
    os.execv(sys.executable, [sys.executable, "-m", "nz_cli", *rest[4:]])
sys.exit(f"fake docker: unexpected call {args}")
"""


@dataclass
class FakeDocker:
    bin: Path
    log: Path

    def calls(self) -> list[list[str]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def compose_calls(self) -> list[list[str]]:
        calls = [c for c in self.calls() if c[:2] == ["compose", "-f"]]
        assert {c[2] for c in calls} <= {str(DEMO)}, "demo.sh must use docker/ by absolute path"
        return [c[3:] for c in calls]


@pytest.fixture
def fake_docker(tmp_path: Path) -> FakeDocker:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    docker = bin_dir / "docker"
    docker.write_text(FAKE_DOCKER.replace("@PYTHON@", sys.executable))
    docker.chmod(0o755)
    return FakeDocker(bin_dir, tmp_path / "docker-calls.log")


@dataclass
class DemoBackend:
    gateway: GatewayProcess
    database_url: str

    @property
    def port(self) -> int:
        port = urlsplit(self.gateway.url).port
        assert port is not None
        return port


@pytest.fixture(scope="module")
def demo_backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoBackend]:
    """What `compose up` would have started: a migrated database, the mock Ollama and the
    gateway with the playground on (here on SQLite, in one process)."""
    work = tmp_path_factory.mktemp("demo-stack")
    database_url = f"sqlite+aiosqlite:///{work / 'gateway.db'}"
    upgrade(database_url)
    with run_mock(work, "--token-rate", "0") as mock:
        gateway = start_gateway(
            work,
            {
                "DATABASE_URL": database_url,
                "OLLAMA_BASE_URL": mock.url,
                "PLAYGROUND_ENABLED": "true",
            },
        )
        try:
            yield DemoBackend(gateway, database_url)
        finally:
            stop_gateway(gateway)


def run_demo(
    fake: FakeDocker, cwd: Path, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    cwd.mkdir(exist_ok=True)
    return subprocess.run(
        [str(DEMO_SH), *args],  # by its path: it is executable and finds its own files
        cwd=cwd,
        env=clean_env(
            PATH=f"{fake.bin}{os.pathsep}{os.environ.get('PATH', '')}",
            FAKE_DOCKER_LOG=str(fake.log),
            **env,
        ),
        capture_output=True,
        text=True,
        check=False,
        timeout=180,
    )


def test_demo_sh_is_an_executable_bash_script() -> None:
    assert os.access(DEMO_SH, os.X_OK)
    text = DEMO_SH.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in text
    assert subprocess.run(["bash", "-n", str(DEMO_SH)], check=False, timeout=30).returncode == 0
    # The CLI calls it makes: real subcommands, with options they have.
    calls = re.findall(r"\bcli ([a-z][a-z-]*)([^\n]*)", text)
    assert {sub for sub, _ in calls} >= {"create-tenant", "create-key"}
    for sub, rest in calls:
        help_text = cli_help(sub)
        for option in re.findall(r"(?<![\w-])--[a-z][a-z-]*", rest):
            assert re.search(rf"(?<![\w-]){option}(?![\w-])", help_text), f"{sub}: {option}?"


def test_demo_sh_passes_shellcheck() -> None:
    shellcheck = shutil.which("shellcheck")
    assert shellcheck is not None, "shellcheck is missing: apt-get install shellcheck"
    result = subprocess.run(
        [shellcheck, str(DEMO_SH)], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0, result.stdout


def test_demo_sh_down_removes_the_stack_with_its_volumes(
    fake_docker: FakeDocker, tmp_path: Path
) -> None:
    result = run_demo(fake_docker, tmp_path / "anywhere", "--down")
    assert result.returncode == 0, result.stderr
    assert fake_docker.compose_calls() == [["down", "--volumes", "--remove-orphans"]]


def test_demo_sh_refuses_unknown_arguments(fake_docker: FakeDocker, tmp_path: Path) -> None:
    result = run_demo(fake_docker, tmp_path / "anywhere", "--dwon")
    assert result.returncode == 2
    assert "usage:" in result.stderr
    assert fake_docker.calls() == []


def test_demo_sh_gives_up_when_the_gateway_never_answers(
    fake_docker: FakeDocker, tmp_path: Path
) -> None:
    result = run_demo(
        fake_docker, tmp_path / "anywhere", DEMO_PORT=str(free_port()), DEMO_TIMEOUT="2"
    )
    assert result.returncode == 1
    assert "did not answer" in result.stderr
    assert "API key" not in result.stdout
    assert [c[0] for c in fake_docker.compose_calls()] == ["up", "ps", "logs"]


@pytest.mark.e2e
def test_demo_sh_stops_when_the_tenant_cannot_be_created(
    demo_backend: DemoBackend, fake_docker: FakeDocker, tmp_path: Path
) -> None:
    """Only "already exists" is taken in stride; any other failure (here: a database
    nobody migrated) ends the script without a key."""
    unmigrated = f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"
    result = run_demo(
        fake_docker,
        tmp_path / "anywhere",
        DEMO_PORT=str(demo_backend.port),
        FAKE_DOCKER_DATABASE_URL=unmigrated,
    )
    assert result.returncode == 1
    assert "creating tenant 'demo' failed" in result.stderr
    assert "migrate" in result.stderr  # the CLI's own message is passed on
    assert "API key" not in result.stdout


@pytest.mark.e2e
def test_demo_sh_prints_a_key_and_five_curls_that_work_and_can_run_again(
    demo_backend: DemoBackend, fake_docker: FakeDocker, tmp_path: Path
) -> None:
    env = {
        "DEMO_PORT": str(demo_backend.port),
        "DEMO_TENANT": "docker-demo",
        "FAKE_DOCKER_DATABASE_URL": demo_backend.database_url,
    }
    first = run_demo(fake_docker, tmp_path / "a", **env)
    assert first.returncode == 0, first.stderr
    second = run_demo(fake_docker, tmp_path / "b", **env)  # the tenant exists by now
    assert second.returncode == 0, second.stderr
    assert "tenant docker-demo already exists; reusing it" in second.stderr

    keys = [
        re.search(r"^API key: (nz_[0-9A-Za-z]{52})$", r.stdout, re.MULTILINE)
        for r in (first, second)
    ]
    assert keys[0] is not None
    assert keys[1] is not None
    assert keys[0][1] != keys[1][1]
    base = f"http://127.0.0.1:{demo_backend.port}"
    out = second.stdout
    assert f"Playground: {base}/playground" in out
    assert httpx.get(f"{base}/playground", timeout=10).status_code == 200

    commands = [line.strip() for line in out.splitlines() if line.strip().startswith("curl ")]
    assert len(commands) == 5
    assert all(keys[1][1] in c for c in commands if "nz_wrong" not in c)
    paths = [urlsplit(next(w for w in shlex.split(c) if w.startswith(base))).path for c in commands]
    assert paths == ["/v1/chat/completions", "/api/chat", "/v1/models", "/v1/models", "/api/pull"]
    results = [
        subprocess.run(shlex.split(c), capture_output=True, text=True, timeout=60, check=True)
        for c in commands
    ]
    sse, ndjson, models, unauthorized, pull = (r.stdout for r in results)
    events = [e.removeprefix("data: ") for e in sse.strip().split("\n\n")]
    assert events[-1] == "[DONE]"
    assert "".join(json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1])
    lines = [json.loads(line) for line in ndjson.splitlines()]
    assert lines[-1]["done"] is True
    assert len(lines) > 5
    assert f"{DEMO_MODEL}:latest" in {m["id"] for m in json.loads(models)["data"]}
    assert unauthorized.startswith("HTTP/1.1 401")
    assert pull.startswith("HTTP/1.1 403")

    compose_calls = fake_docker.compose_calls()
    assert compose_calls.count(["up", "-d", "--build"]) == 2
    cli_calls = [
        c[4] for c in compose_calls if c[:4] == ["exec", "-T", "gateway", "neuronetz-gateway"]
    ]
    assert cli_calls == ["create-tenant", "create-key", "create-tenant", "set-models", "create-key"]


@pytest.mark.e2e
def test_gateway_image_healthcheck_command_tells_up_from_down(demo_backend: DemoBackend) -> None:
    check = exec_form(final_stage(GATEWAY_DOCKERFILE).last("HEALTHCHECK"))
    assert check[0] == "python"
    command = [sys.executable, *check[1:]]

    def probe(port: int) -> int:
        return subprocess.run(
            command,
            env=clean_env(GATEWAY_PORT=str(port)),
            capture_output=True,
            check=False,
            timeout=30,
        ).returncode

    assert probe(demo_backend.port) == 0
    assert probe(free_port()) != 0
