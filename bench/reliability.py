"""The reliability and security report: `python -m bench.reliability [--out bench/reliability.md] [--json PATH]`.

Runs the tests that kill processes and send garbage (tests/faults, tests/security, the per-route auth tests
and the killed-worker test of tests/jobs), collecting what each one tried from the measurements the tests
record, then the load bench (bench/load.py, 64 clients x 200 steps with 5% of answers lost), and writes
bench/reliability.md: each fault and attack, how many were tried, and the outcome. The report is generated;
edit this file, not the markdown.

    python -m bench.reliability                       # ~5 minutes on a 2-core machine
    python -m bench.reliability --load-clients 8 --load-steps 50 --out /tmp/reliability.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TESTS = ["tests/faults", "tests/security", "tests/api/test_auth.py",
         "tests/jobs/test_recovery.py::test_killed_worker_resumes_from_its_checkpoint"]


# --- running -------------------------------------------------------------------------------------------------

def run_tests(workdir: Path, timeout: float) -> tuple[list[tuple[str, str]], dict[str, list[dict]], float]:
    """Each test's node id and outcome (passed, failed, skipped), the records the tests wrote, the wall time."""
    junit, records = workdir / "junit.xml", workdir / "records.jsonl"
    env = {**os.environ, "L2O_RELIABILITY_RECORD": str(records)}
    began = time.monotonic()
    subprocess.run([sys.executable, "-m", "pytest", *TESTS, "-q", "-p", "no:cacheprovider", f"--junitxml={junit}"],
                   cwd=REPO, env=env, timeout=timeout, check=False)
    wall = time.monotonic() - began
    outcomes = []
    if junit.exists():
        for case in ET.parse(junit).iter("testcase"):
            node = case.get("classname", "").replace(".", "/") + ".py::" + case.get("name", "")
            failed = case.find("failure") is not None or case.find("error") is not None
            outcomes.append((node, "failed" if failed else "skipped" if case.find("skipped") is not None
                             else "passed"))
    by_name: dict[str, list[dict]] = defaultdict(list)
    if records.exists():
        for line in records.read_text().splitlines():
            entry = json.loads(line)
            by_name[entry.pop("name")].append(entry)
    return outcomes, dict(by_name), wall


def run_load(workdir: Path, clients: int, steps: int, timeout: float) -> dict[str, Any] | None:
    out = workdir / "load.json"
    subprocess.run([sys.executable, "-m", "bench.load", "--clients", str(clients), "--steps", str(steps),
                    "--timeout", str(timeout), "--json", str(out)], cwd=REPO, check=False)
    return json.loads(out.read_text()) if out.exists() else None


# --- the report ------------------------------------------------------------------------------------------------

@dataclass
class Row:
    area: str
    what: str
    tried: str
    outcome: str
    tests: list[str]   # node ids or prefixes whose outcomes decide the row
    status: str = ""


def status_of(outcomes: list[tuple[str, str]], prefixes: list[str]) -> tuple[str, int]:
    matched = [s for node, s in outcomes if any(node.startswith(p) for p in prefixes)]
    if not matched:
        return "not run", 0
    if "failed" in matched:
        return f"FAILED ({matched.count('failed')} of {len(matched)} tests)", len(matched)
    if all(s == "skipped" for s in matched):
        return "skipped", len(matched)
    return "passed", len(matched)


def first(records: dict[str, list[dict]], name: str) -> dict[str, Any]:
    return (records.get(name) or [{}])[0]


def mib(n: float | None) -> str:
    return f"{n / 2**20:.1f} MiB" if n is not None else "?"


def rows(records: dict[str, list[dict]], load: dict[str, Any] | None) -> list[Row]:
    from tests.api.test_auth import ROUTES
    from tests.security.test_keys import ODD_AUTHORIZATION

    fuzz = first(records, "fuzz")
    statuses = ", ".join(f"{k}: {v}" for k, v in fuzz.get("statuses", {}).items())
    redis_kill, sigterm, mem_kill = (first(records, f"restart:{n}") for n in
                                     ("redis-sigkill", "memory-sigterm", "memory-sigkill"))
    outage = first(records, "database_outage")
    limits = records.get("body_limit", [])
    memory = [v for k, vs in records.items() if k.startswith("memory:") for v in vs]
    peak = max((m.get("python_peak", 0) for m in memory), default=None)
    rss = max((m.get("rss_growth", 0) for m in memory), default=None)
    out = [
        Row("fault", "API SIGKILLed mid training run, Redis session store, restarted on the same port",
            f"{redis_kill.get('stops', '?')} kills in a {redis_kill.get('steps', '?')}-step RemoteOptimizer run",
            "the SDK's retries carried the run on; final parameters bit-identical to an uninterrupted run",
            ["tests/faults/test_api_restart.py::test_sigkill_with_the_redis_store"]),
        Row("fault", "API stopped with SIGTERM mid run, memory session store",
            f"{sigterm.get('stops', '?')} graceful stop in a {sigterm.get('steps', '?')}-step run",
            "sessions saved at shutdown and loaded at start; final parameters bit-identical",
            ["tests/faults/test_api_restart.py::test_sigterm_with_the_memory_store"]),
        Row("fault", "API SIGKILLed mid run, memory session store (the session is gone)",
            f"{mem_kill.get('stops', '?')} kill; {mem_kill.get('sessions_lost', '?')} SessionLostError "
            f"(at step {mem_kill.get('lost_at', '?')})",
            "a clear SessionLostError naming the fix; resumed from the last state_dict(), final parameters "
            "bit-identical", ["tests/faults/test_api_restart.py::test_sigkill_with_the_memory_store"]),
        Row("fault", "worker SIGKILLed mid meta-training job (embedded executor on SQLite, procrastinate on "
            "PostgreSQL)", "1 kill per executor",
            "job taken over and resumed from its last resume checkpoint (iteration asserted), finished, exactly "
            "one registry version", ["tests/jobs/test_recovery.py::test_killed_worker_resumes_from_its_checkpoint"]),
        Row("fault", "PostgreSQL unreachable (TCP proxy cut under a running `l2o serve`)",
            f"{outage.get('steps_during', '?')} steps and {outage.get('refused_503', '?')} registry/key calls "
            "during the outage",
            f"steps on the live session went on (bit-identical to lopt); registry calls 503 database_not_ready "
            f"with Retry-After; recovered by itself {outage.get('recovered_s', '?')} s after the database came back",
            ["tests/faults/test_database_outage.py"]),
    ]
    if load is not None:
        lat = load["step_latency_ms"]
        out.append(Row(
            "load", f"{load['clients']} concurrent clients x {load['steps_per_client']} steps, "
                    f"{load['drop_rate']:.0%} of answers dropped by the client",
            f"{load['steps_expected']} steps, {load['answers_dropped']} answers dropped and retried",
            f"{len(load['errors'])} errors, {load['steps_applied']} steps applied, {len(load['mismatches'])} "
            f"mismatches against a sequential lopt replay; step latency p50 {lat['p50']:.0f} ms, p99 "
            f"{lat['p99']:.0f} ms (retries included), {load['steps_per_s']:.0f} steps/s",
            ["bench/load.py"], "passed" if load["ok"] else "FAILED"))
    else:
        out.append(Row("load", "64 concurrent clients x 200 steps, 5% of answers dropped", "-", "the bench did not "
                       "produce a result", ["bench/load.py"], "FAILED"))
    out += [
        Row("attack", "every route fuzzed from the OpenAPI schema (schemathesis; valid and invalid inputs, "
            "unsupported methods), with a valid admin key",
            f"{fuzz.get('cases', '?')} cases over the {fuzz.get('operations', '?')} operations (and every other "
            "method on each path)",
            f"no 5xx; every answer matched the schema (status, content type, headers, body). Statuses: {statuses}",
            ["tests/security/test_fuzz.py"]),
        Row("attack", "malformed safetensors on the step: header length beyond the body or 2^63, nesting 20k deep, "
            "duplicate names, overlapping/reversed/out-of-range offsets, holes, shape/byte mismatch, 2^80-element "
            "shapes, wrong dtypes, bad metadata; missing/misshapen/NaN gradients",
            f"{first(records, 'malformed:step').get('cases', '?')} bodies",
            "a 4xx naming the problem for each; the session's state byte-identical afterwards and still steppable",
            ["tests/security/test_malformed.py::test_malformed_step"]),
        Row("attack", "the same, and forged states (wrong dtype, shape, version, nested shapes), on session resume",
            f"{first(records, 'malformed:state').get('cases', '?')} bodies",
            "a 4xx each; no session opened", ["tests/security/test_malformed.py::test_malformed_states"]),
        Row("attack", "malformed checkpoints on upload: the bodies above, truncated data, garbage header, no/bad/"
            "out-of-range config, missing/extra/misshapen/integer/NaN weights, weights that blow up, bad config "
            "headers", f"{first(records, 'malformed:checkpoint').get('cases', '?')} uploads",
            "422 invalid_checkpoint (400 for a bad header) each; nothing stored",
            ["tests/security/test_malformed.py::test_malformed_checkpoints",
             "tests/security/test_malformed.py::test_a_config_header"]),
        Row("attack", "memory blow-up through lying sizes (all the malformed bodies, and session shapes of 2^80 "
            "coordinates)", f"{len(memory)} test runs watched",
            f"peak Python allocation {mib(peak)} while they ran; peak RSS grew {mib(rss)}",
            ["tests/security/test_malformed.py"]),
        Row("attack", "bodies over the limit sent chunked (no Content-Length), offering 1 GiB",
            f"{len(limits)} routes ({', '.join(r['path'] for r in limits)})",
            "413 payload_too_large naming the setting; the app read at most "
            + (f"{max(r['read'] - r['limit'] for r in limits) / 1024:.0f} KiB past the limit" if limits else "?")
            + " (one network read)", ["tests/security/test_body_limits.py"]),
        Row("attack", "per-key rate limit (token bucket; in Redis with the Redis store)",
            "bursts over the limit from one key, beside another key; two API processes on one Redis",
            "429 rate_limited with Retry-After; other keys unaffected; the budget shared across processes",
            ["tests/security/test_rate_limits.py"]),
        Row("attack", "no key, wrong key, revoked key, malformed header, missing scope, on every route",
            f"{len(ROUTES)} routes x 4 credentials, and each scope withheld",
            "401 (403 for a missing scope) on every route", ["tests/api/test_auth.py"]),
        Row("attack", "odd Authorization headers (empty, other schemes, 8 KB, non-ASCII, NUL, two keys)",
            f"{len(ODD_AUTHORIZATION)} headers", "401 each, never an error",
            ["tests/security/test_keys.py::test_odd_authorization"]),
        Row("attack", "another key's sessions and jobs (get, state, step, replay, delete, events, cancel, lists)",
            "8 requests and 2 lists", "404 exactly as for ids that never existed; nothing changed",
            ["tests/security/test_keys.py::test_another_keys"]),
        Row("attack", "keys in logs: `l2o serve` at debug level with uvicorn's access log, over a run that creates, "
            "uses, mistypes and revokes keys", "3 keys searched for (whole, halves, hashes)",
            "no key, key fragment, key hash or Authorization header in the output",
            ["tests/security/test_keys.py::test_keys_never_reach_the_logs"]),
        Row("attack", "timing of the key check", "the check's code path",
            "lookup by sha256, then hmac.compare_digest", ["tests/security/test_keys.py::test_a_key_is_checked"]),
    ]
    return out


def markdown(report: list[Row], meta: dict[str, Any]) -> str:
    lines = [
        "# Reliability and security report",
        "",
        f"Generated by `python -m bench.reliability` on {meta['date']} ({meta['machine']}; commit "
        f"{meta['commit']}). Do not edit: rerun it.",
        "",
        f"{meta['passed']} of {meta['tests']} tests passed, {meta['failed']} failed, {meta['skipped']} skipped, "
        f"in {meta['tests_s']:.0f} s; the load bench ran in {meta['load_s']:.0f} s.",
        "",
        "| | Fault or attack | Tried | Outcome | Result |",
        "|---|---|---|---|---|",
    ]
    for row in report:
        cells = [row.area, row.what, row.tried, row.outcome, row.status]
        lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    lines += ["", "Where each row is tested:", ""]
    for row in report:
        lines.append(f"- {row.what.split(':')[0].split(' (')[0]}: " + ", ".join(f"`{t}`" for t in row.tests))
    return "\n".join(lines) + "\n"


def git_commit() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True).stdout
        return rev + (" with uncommitted changes" if dirty.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.reliability", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "reliability.md")
    parser.add_argument("--json", type=Path, help="also write the rows and the raw records here")
    parser.add_argument("--load-clients", type=int, default=64)
    parser.add_argument("--load-steps", type=int, default=200)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds for the tests and for the load bench")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    with tempfile.TemporaryDirectory(prefix="l2o-reliability-") as tmp:
        workdir = Path(tmp)
        outcomes, records, tests_s = run_tests(workdir, args.timeout)
        began = time.monotonic()
        load = run_load(workdir, args.load_clients, args.load_steps, args.timeout)
        load_s = time.monotonic() - began
    report = rows(records, load)
    for row in report:
        if not row.status:
            row.status = status_of(outcomes, row.tests)[0]
    counts = {s: sum(1 for _, v in outcomes if v == s) for s in ("passed", "failed", "skipped")}
    meta = {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "commit": git_commit(),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
            "tests": len(outcomes), **counts, "tests_s": tests_s, "load_s": load_s}
    args.out.write_text(markdown(report, meta))
    print(args.out.read_text())
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "rows": [vars(r) for r in report], "records": records,
                                         "load": load, "outcomes": outcomes}, indent=2, default=str) + "\n")
    ok = counts["failed"] == 0 and all(r.status in ("passed", "skipped") for r in report)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
