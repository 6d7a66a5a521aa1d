"""The benchmark harness's pure parts: reading wrk and MONITOR back, and the report.

These run in the default test run (they start nothing), so a harness that would
misread its tools or misreport a target fails CI long before anyone benchmarks.
"""

from __future__ import annotations

import json
from importlib.resources import files
from typing import Any

import pytest
from redis import Redis

from tests.benchmarks import report
from tests.benchmarks.loadgen import _MARK, lua_script, parse_wrk
from tests.benchmarks.report import derive
from tests.benchmarks.run import count_monitor, gateway_scripts
from tests.benchmarks.streams import content_frames


def _wrk_line(**overrides: int) -> str:
    data = {
        "requests": 1000,
        "duration_us": 2_000_000,
        "connect": 0,
        "read": 0,
        "write": 0,
        "status": 0,
        "timeout": 0,
        "p50": 500,
        "p90": 800,
        "p99": 1500,
        "p999": 3000,
        "max": 9000,
        "mean": 600.5,
    }
    data.update(overrides)
    return _MARK + json.dumps(data)


def test_parse_wrk_reads_the_done_hook_line_among_wrks_own_output() -> None:
    output = "Running 2s test @ http://x\n  1 threads and 16 connections\n" + _wrk_line()
    result = parse_wrk(output, connections=16)
    assert (result.requests, result.p50_us, result.p99_us, result.max_us) == (1000, 500, 1500, 9000)
    assert result.rps == pytest.approx(500.0)


def test_only_2xx_answers_count_as_throughput() -> None:
    result = parse_wrk(_wrk_line(status=400, read=3, timeout=2), connections=1)
    assert result.rps == pytest.approx(300.0)
    assert result.errors == 5


def test_parse_wrk_refuses_output_without_a_summary() -> None:
    with pytest.raises(ValueError, match="no summary"):
        parse_wrk("unable to connect to 127.0.0.1:1 Connection refused", connections=1)


def test_the_lua_script_quotes_any_body_and_header() -> None:
    body = b'{"content": "]] ]=] \\" \\n"}'
    script = lua_script("POST", body, {"Authorization": "Bearer nz_x]]y"})
    # Each long bracket picks a level its text cannot close early.
    assert 'wrk.body = [==[{"content": "]] ]=] \\" \\n"}]==]' in script
    assert "wrk.headers[ [[Authorization]] ] = [=[Bearer nz_x]]y]=]" in script
    assert _MARK in script


MONITOR = [
    "OK",
    '1700000000.000001 [0 127.0.0.1:5000] "EVALSHA" "abc" "2" "{nz_a}:rpm" "x"',
    '1700000000.000002 [0 lua] "ZADD" "{nz_a}:rpm" "1" "x"',
    '1700000000.000003 [0 lua] "INCRBY" "{nz_a}:day" "7"',
    '1700000000.000004 [0 127.0.0.1:5000] "EVALSHA" "def" "1" "{nz_a}:lease"',
    '1700000000.000005 [0 127.0.0.1:5001] "evalsha" "abc" "2" "{nz_b}:rpm" "x"',
    '1700000000.000006 [0 127.0.0.1:5001] "EVALSHA" "def" "1" "{nz_b}:lease"',
]


def test_monitor_counts_the_clients_commands_not_what_lua_ran() -> None:
    counted = count_monitor(MONITOR, requests=2)
    assert counted["commands"] == {"evalsha": 4}
    assert counted["per_request"] == 2.0


def test_monitor_names_the_scripts_it_knows() -> None:
    counted = count_monitor(MONITOR, requests=2, scripts={"abc": "admit"})
    assert counted["commands"] == {"evalsha:admit": 2, "evalsha": 2}


def test_the_gateways_scripts_are_named_by_the_sha_evalsha_sends() -> None:
    scripts = gateway_scripts()
    source = files("nz_proxy.admission.stores").joinpath("admit.lua").read_text()
    # redis-py's own script object, as the gateway registers it (no connection made).
    assert scripts[Redis().register_script(source).sha] == "admit"
    assert sorted(scripts.values()) == [
        "admit",
        "listing",
        "reap",
        "release",
        "renew",
        "seed",
        "settle",
    ]


def test_hot_calls_leave_out_the_timers_scripts() -> None:
    results = {
        "systems": {
            "direct": {"levels": []},
            "gw": {
                "state": {
                    "requests": 100,
                    "argon2_verifications": 0,
                    "round_trips": {
                        "requests": 100,
                        "commands": {
                            "evalsha:admit": 100,
                            "evalsha:settle": 100,
                            "evalsha:renew": 7,
                            "hdel": 1,
                        },
                    },
                }
            },
        }
    }
    gateway = derive(results)[1]
    assert gateway.redis_calls_per_request == 2.0
    assert gateway.redis_batched_per_request == 0.08


@pytest.mark.parametrize(
    ("line", "frames"),
    [
        (b'{"message":{"role":"assistant","content":"Hi"},"done":false}\n', 1),
        (b'{"message":{"role":"assistant","content":""},"done":true}\n', 0),
        (b'{"response":"Hi","done":false}', 1),
        (b'data: {"choices":[{"delta":{"content":"Hi"}}]}', 1),
        (b'data: {"choices":[{"delta":{"role":"assistant"}}]}', 0),
        (b'data: {"choices":[],"usage":{"total_tokens":3}}', 0),
        (b"data: [DONE]", 0),
        (b"", 0),
        (b"not json", 0),
    ],
)
def test_content_frames_counts_generated_text_only(line: bytes, frames: int) -> None:
    assert content_frames(line) == frames


def _level(
    connections: int, p50: int, p99: int, requests: int = 1000, **extra: int
) -> dict[str, Any]:
    return {
        "connections": connections,
        "requests": requests,
        "duration_s": 1.0,
        "errors": extra.get("errors", 0),
        "non_2xx": extra.get("non_2xx", 0),
        "p50_us": p50,
        "p90_us": p50,
        "p99_us": p99,
        "p999_us": p99,
        "max_us": p99,
        "rps": float(requests - extra.get("non_2xx", 0)),
        "cpu_s": requests * 0.0005,
    }


def _results(ours: list[dict[str, Any]], floor_rps: int, peer_rps: int) -> dict[str, Any]:
    direct = [_level(c, 50, 100) for c in (1, 16, 256)]
    return {
        "systems": {
            "direct": {"label": "direct", "levels": direct},
            "floor": {"label": "floor", "levels": [_level(16, 500, 900, requests=floor_rps)]},
            "neuronetz-production": {"label": "ours", "levels": ours},
            "litellm": {"label": "peer", "levels": [_level(1, 16_000, 30_000, requests=peer_rps)]},
        }
    }


def test_peak_throughput_ignores_levels_whose_p99_adds_10_ms_or_errors() -> None:
    ours = [
        _level(1, 900, 2_000, requests=700),
        _level(16, 5_000, 9_000, requests=1_500),
        _level(256, 90_000, 200_000, requests=1_800),  # p99 past the ceiling
    ]
    figures = {f.name: f for f in report.derive(_results(ours, floor_rps=4_000, peer_rps=50))}
    production = figures["neuronetz-production"]
    assert production.added_p50_ms[1] == pytest.approx(0.85)
    assert production.added_p99_ms[1] == pytest.approx(1.9)
    assert production.rps_within_ceiling == 1_500
    assert production.cpu_ms_per_request[16] == pytest.approx(0.5)


def test_targets_report_misses_as_misses() -> None:
    ours = [_level(1, 1_300, 6_000, requests=700), _level(16, 5_000, 9_000, requests=1_200)]
    found = {t.name: t for t in report.targets(report.derive(_results(ours, 4_000, 100)))}
    assert not found["added latency, c=1, p50"].met
    assert not found["added latency, c=1, p99"].met
    assert not found["throughput vs LiteLLM"].met  # 12x
    assert not found["throughput vs floor rig"].met  # 30%
    ours = [_level(1, 900, 2_000, requests=700), _level(16, 5_000, 9_000, requests=2_000)]
    found = {t.name: t for t in report.targets(report.derive(_results(ours, 4_000, 50)))}
    assert all(t.met for name, t in found.items() if name.startswith(("added", "throughput")))


def test_splice_replaces_only_the_results_section() -> None:
    document = f"intro\n{report.START}\nold table\n{report.END}\noutro\n"
    spliced = report.splice(document, "new table\n")
    assert spliced == f"intro\n{report.START}\nnew table\n{report.END}\noutro\n"
    with pytest.raises(ValueError, match="no"):
        report.splice("no markers here", "x")


def test_a_level_where_nothing_finished_has_no_latency() -> None:
    level = {"errors": 0, "non_2xx": 0, "rps": 0.0, "cpu_s": 0.0}
    results = {
        "systems": {
            "direct": {
                "levels": [
                    {**level, "connections": 256, "requests": 9, "p50_us": 4000, "p99_us": 8000}
                ]
            },
            "peer": {
                "levels": [{**level, "connections": 256, "requests": 0, "p50_us": 0, "p99_us": 0}]
            },
        }
    }
    peer = derive(results)[1]
    assert peer.added_p50_ms == {}
    assert peer.added_p99_ms == {}
    assert peer.rps_within_ceiling is None
