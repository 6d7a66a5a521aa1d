#!/usr/bin/env bash
# The compose demo in one command: PostgreSQL, Redis, the mock Ollama and the
# gateway from docker-compose.demo.yml, a demo tenant that may use every model, a fresh
# API key, and five curl commands to paste.
#
#   ./docker/demo.sh           bring the stack up (again) and print a new key
#   ./docker/demo.sh --down    stop it and delete its volumes
#
# Works from any directory. Environment: DEMO_PORT (default 8080, on 127.0.0.1),
# DEMO_TENANT (demo), DEMO_MODEL (llama3.2, one the mock serves), DEMO_TIMEOUT (180 s).
set -euo pipefail

here="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)"
compose_file="$here/docker-compose.demo.yml"
export DEMO_PORT="${DEMO_PORT:-8080}" # compose publishes the gateway on this port
tenant="${DEMO_TENANT:-demo}"
model="${DEMO_MODEL:-llama3.2}"
timeout="${DEMO_TIMEOUT:-180}"
base="http://127.0.0.1:$DEMO_PORT"

die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

usage() {
    printf 'usage: %s [--down]\n' "$0"
    printf '  (no argument)  start the demo stack, create a key, print examples\n'
    printf '  --down         stop the demo stack and delete its volumes\n'
}

compose() {
    docker compose -f "$compose_file" "$@"
}

# The bootstrap CLI inside the running gateway container (-T: no TTY, clean stdout).
cli() {
    compose exec -T gateway neuronetz-gateway "$@"
}

require() {
    command -v docker > /dev/null 2>&1 || die "docker is not installed"
    docker compose version > /dev/null 2>&1 || die "the docker compose plugin is not installed"
}

up() {
    command -v curl > /dev/null 2>&1 || die "curl is not installed"
    [[ $DEMO_PORT =~ ^[0-9]+$ ]] || die "DEMO_PORT must be a port number, not '$DEMO_PORT'"

    compose up -d --build

    printf 'waiting for the gateway on %s/healthz ...\n' "$base" >&2
    local deadline=$((SECONDS + timeout))
    until curl -fs -o /dev/null --max-time 2 "$base/healthz"; do
        if ((SECONDS >= deadline)); then
            compose ps >&2 || true
            compose logs --tail 40 gateway >&2 || true
            die "the gateway did not answer on $base/healthz within ${timeout}s"
        fi
        sleep 1
    done

    # A rerun finds the tenant already there (the CLI exits 1 saying so): keep it, and
    # make sure it may still use every model. Any other failure stops the script.
    local output
    if ! output="$(cli create-tenant --name "$tenant" --allow-all-models 2>&1)"; then
        if [[ $output == *"tenant '$tenant' already exists"* ]]; then
            cli set-models --tenant "$tenant" --allow-all > /dev/null
            printf 'tenant %s already exists; reusing it\n' "$tenant" >&2
        else
            die "creating tenant '$tenant' failed: $output"
        fi
    fi

    # The key is printed once, alone on stdout; what it is goes to stderr.
    local key
    key="$(cli create-key --tenant "$tenant" --name "demo-$(date -u +%Y%m%dT%H%M%SZ)")" \
        || die "creating a key for tenant '$tenant' failed"
    key="${key//[[:space:]]/}"
    [[ $key =~ ^nz_[0-9A-Za-z]{52}$ ]] || die "unexpected output from create-key: '$key'"

    # The curls below need the gateway to have discovered the mock's models.
    local models
    deadline=$((SECONDS + 30))
    while true; do
        models="$(curl -fs --max-time 2 -H "Authorization: Bearer $key" "$base/v1/models")" \
            || models=""
        [[ $models == *"\"$model"* ]] && break
        if ((SECONDS >= deadline)); then
            printf 'warning: %s is not listed by %s/v1/models yet\n' "$model" "$base" >&2
            break
        fi
        sleep 1
    done

    banner "$key"
}

banner() {
    local key="$1"
    local auth="-H \"Authorization: Bearer $key\""
    local hello='"messages": [{"role": "user", "content": "Say hello"}]'
    cat << EOF

neuronetz-gateway demo (docker compose): the gateway in front of a mock Ollama, on PostgreSQL and Redis.

API key: $key
Playground: $base/playground

Try it (paste any of these into another terminal):

  1. OpenAI chat, streamed as SSE
  curl -N $base/v1/chat/completions $auth -H "Content-Type: application/json" -d '{"model": "$model", "stream": true, $hello}'

  2. Ollama chat, streamed as NDJSON
  curl -N $base/api/chat $auth -d '{"model": "$model", $hello}'

  3. the models this key may use
  curl $base/v1/models $auth

  4. a wrong key: 401
  curl -i $base/v1/models -H "Authorization: Bearer nz_wrong"

  5. backend administration is refused: 403
  curl -i $base/api/pull $auth -d '{"model": "$model"}'

Administer it:   docker compose -f "$compose_file" exec gateway neuronetz-gateway --help
Stop everything: "$here/demo.sh" --down

EOF
}

case "${1:-}" in
    "")
        require
        up
        ;;
    --down)
        require
        compose down --volumes --remove-orphans
        ;;
    -h | --help)
        usage
        ;;
    *)
        usage >&2
        exit 2
        ;;
esac
