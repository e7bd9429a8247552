"""The reliability and security report: `python -m bench.reliability [--out bench/reliability.md] [--json PATH]`.

Runs the tests that kill processes and send garbage (tests/faults, tests/security, the per-route auth tests,
the killed-worker and two-worker tests of tests/jobs), collecting what each one tried from the measurements the tests
record, then the load bench (bench/load.py, 64 clients x 200 steps with 5% of answers lost), and writes
bench/reliability.md: each fault and attack, how many were tried, and the outcome. The report is generated;
edit this file, not the markdown.

    python -m bench.reliability                       # ~10 minutes on a 2-core machine
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
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TESTS = ["tests/faults", "tests/security", "tests/api/test_auth.py", "tests/api/test_health.py",
         "tests/registry/test_names.py",
         "tests/cli/test_serve_workers.py", "tests/client/test_admin_key.py", "tests/client/test_session_pages.py",
         "tests/jobs/test_recovery.py::test_killed_worker_resumes_from_its_checkpoint",
         "tests/jobs/test_scale_out.py", "tests/jobs/test_price.py", "tests/jobs/test_memory_cap.py",
         "tests/jobs/test_publish_scope.py", "tests/jobs/test_bounded_stop.py"]
FUZZ_EXAMPLES = 80   # per operation: over 2,000 cases in all (the tests' default, 30, keeps CI to a minute)


# --- running -------------------------------------------------------------------------------------------------

def run_tests(workdir: Path, timeout: float) -> tuple[list[tuple[str, str]], dict[str, list[dict]], float]:
    """Each test's node id and outcome (passed, failed, skipped), the records the tests wrote, the wall time."""
    junit, records = workdir / "junit.xml", workdir / "records.jsonl"
    env = {**os.environ, "L2O_RELIABILITY_RECORD": str(records), "L2O_FUZZ_EXAMPLES": str(FUZZ_EXAMPLES)}
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
    measured: list[str] = field(default_factory=list)   # records the outcome is written from


def settle(row: Row, outcomes: list[tuple[str, str]], records: dict[str, list[dict]]) -> str:
    """The row's status from its tests' outcomes; a row that passed without the measurements its text is
    written from (a record missing, or a `?` in its text) is partial: a part of it did not run, or did not
    get as far as measuring."""
    status = status_of(outcomes, row.tests)[0]
    missing = [name for name in row.measured if not records.get(name)]
    if status == "passed" and missing:
        return f"partial (not measured: {', '.join(missing)})"
    if status == "passed" and "?" in row.tried + row.outcome:
        return "partial (a measurement is missing: ? in the row)"
    return status


def status_of(outcomes: list[tuple[str, str]], prefixes: list[str]) -> tuple[str, int]:
    """passed only when every test behind the row ran and passed; a skipped one makes the row partial."""
    matched = [s for node, s in outcomes if any(node.startswith(p) for p in prefixes)]
    if not matched:
        return "not run", 0
    if "failed" in matched:
        return f"FAILED ({matched.count('failed')} of {len(matched)} tests)", len(matched)
    if all(s == "skipped" for s in matched):
        return "skipped", len(matched)
    if "skipped" in matched:
        return f"partial ({matched.count('skipped')} of {len(matched)} tests skipped)", len(matched)
    return "passed", len(matched)


def first(records: dict[str, list[dict]], name: str) -> dict[str, Any]:
    return (records.get(name) or [{}])[0]


def mib(n: float | None) -> str:
    return f"{n / 2**20:.1f} MiB" if n is not None else "?"


def rows(records: dict[str, list[dict]], load: dict[str, Any] | None) -> list[Row]:
    """Each row says what its tests send and check; the outcome is written from what they recorded (a `?`
    where a test recorded nothing, so a row never claims what was not measured)."""
    from tests.api.test_auth import ROUTES, SCOPES
    from tests.security.test_control_characters import CONTROLS
    from tests.security.test_control_characters import ROUTES as ALL_ROUTES
    from tests.security.test_keys import ODD_AUTHORIZATION

    fuzz = first(records, "fuzz")
    statuses = ", ".join(f"{k}: {v}" for k, v in fuzz.get("statuses", {}).items())
    redis_kill, sigterm, mem_kill = (first(records, f"restart:{n}") for n in
                                     ("redis-sigkill", "memory-sigterm", "memory-sigkill"))
    outage = first(records, "database_outage")
    servers, workers = first(records, "scale_out:servers"), first(records, "scale_out:workers")
    limits = records.get("body_limit", [])
    memory = first(records, "memory:server")
    numbers, versions = first(records, "numbers:concurrent"), first(records, "numbers:versions")
    controls = [v for k, vs in records.items() if k.startswith("control:") for v in vs]
    slow_header, slow_body = first(records, "slow:header"), first(records, "slow:body")
    quota, priced = first(records, "sessions:quota"), first(records, "sessions:priced")
    declared = records.get("step_body:declared", [])
    chunked = first(records, "step_body:chunked")
    idle, revoked = first(records, "streams:idle"), first(records, "revocation:api")
    # The job tests run once per database: one row each per spec.
    priced_jobs = list({j["spec"]: j for j in records.get("jobs:priced", [])}.values())
    capped = first(records, "jobs:memory_cap")
    publish = first(records, "jobs:publish_scope")
    cancels, sigterms = records.get("stop:cancel", []), records.get("stop:sigterm", [])

    def s(value: Any, fmt: str = "{}") -> str:
        return fmt.format(value) if value is not None else "?"

    out = [
        Row("fault", "API SIGKILLed mid training run, Redis session store, restarted on the same port",
            f"{s(redis_kill.get('stops'))} kills in a {s(redis_kill.get('steps'))}-step RemoteOptimizer run, each "
            f"once a step request had reached the server whole and before its answer reached the client (a proxy "
            f"held it back): {s(redis_kill.get('in_flight'))} steps in flight, "
            f"{s(redis_kill.get('answered_before_stop'))} of them answered before the kill",
            "every step applied once (the server's count equals the run's); final parameters bit-identical to an "
            "uninterrupted run" if redis_kill.get("identical") else "?",
            ["tests/faults/test_api_restart.py::test_sigkill_with_the_redis_store"],
            measured=["restart:redis-sigkill"]),
        Row("fault", "API stopped with SIGTERM mid run, memory session store",
            f"{s(sigterm.get('stops'))} graceful stop in a {s(sigterm.get('steps'))}-step run, with "
            f"{s(sigterm.get('in_flight'))} step request in flight ({s(sigterm.get('answered_before_stop'))} "
            "answered before the process exited)",
            "sessions saved at shutdown and loaded at start; final parameters bit-identical"
            if sigterm.get("identical") else "?",
            ["tests/faults/test_api_restart.py::test_sigterm_with_the_memory_store"],
            measured=["restart:memory-sigterm"]),
        Row("fault", "API SIGKILLed mid run, memory session store (the session is gone)",
            f"{s(mem_kill.get('stops'))} kill with {s(mem_kill.get('in_flight'))} step request in flight; "
            f"{s(mem_kill.get('sessions_lost'))} SessionLostError (at step {s(mem_kill.get('lost_at'))}, the one "
            "in flight)",
            "a SessionLostError naming the fix; resumed from the last state_dict(), final parameters bit-identical"
            if mem_kill.get("identical") else "?",
            ["tests/faults/test_api_restart.py::test_sigkill_with_the_memory_store"],
            measured=["restart:memory-sigkill"]),
        Row("fault", "worker SIGKILLed mid meta-training job", "1 kill per executor",
            "job taken over and resumed from its last resume checkpoint (iteration asserted), finished, exactly "
            "one registry version", ["tests/jobs/test_recovery.py::test_killed_worker_resumes_from_its_checkpoint"]),
        Row("fault", "a job needing more memory than the per-job cap, on the embedded default (issue 20 item 1)",
            f"a job needing more than a {s(capped.get('cap_bytes') and capped['cap_bytes'] // 2**30)} GiB "
            "address-space cap, beside a live session in the API process",
            f"the job ended {s(capped.get('state'))} ({s(capped.get('error', '?').split(';')[0])}), in a process of "
            "its own; /healthz "
            f"{s(capped.get('healthz'))} and the session's next step {s(capped.get('step_after'))} afterwards; the "
            "next job accepted", ["tests/jobs/test_memory_cap.py"], measured=["jobs:memory_cap"]),
        Row("fault", "cancel in each phase of a job (training inside one long iteration, evaluating, publishing "
            "behind a locked table); SIGTERM to `l2o worker` and `l2o serve` while a job evaluates (issue 20 "
            "item 7)",
            f"{len(cancels)} cancels (training and evaluating on SQLite and PostgreSQL, publishing on PostgreSQL), "
            f"{len(sigterms)} SIGTERMs",
            "cancelled, no version published, after "
            + (", ".join(f"{c['seconds']} s ({c['phase']})" for c in cancels) or "?") + " (bound 5 s); "
            + (", ".join(f"{t['process']} exited after {t['seconds']} s" for t in sigterms) or "?")
            + " (bound 15 s), its job queued again with its resume checkpoint; serve's memory-store sessions "
            "saved", ["tests/jobs/test_bounded_stop.py"], measured=["stop:cancel", "stop:sigterm"]),
        Row("fault", "PostgreSQL unreachable (TCP proxy cut under a running `l2o serve`)",
            f"{s(outage.get('steps_during'))} steps and {s(outage.get('refused_503'))} registry/key calls during "
            "the outage",
            f"steps on the live session went on (bit-identical to lopt); registry calls 503 database_not_ready with "
            f"Retry-After; recovered {s(outage.get('recovered_s'))} s after the database came back",
            ["tests/faults/test_database_outage.py"], measured=["database_outage"]),
        Row("scale-out", "two `l2o serve` processes on one PostgreSQL and one Redis; one client's requests "
            "alternating between them, 5% of step answers lost after the step was applied, each retried with the "
            "same step number (so on the other process)",
            f"{s(servers.get('steps'))} steps in {s(servers.get('attempts'))} attempts "
            f"({' and '.join(str(n) for n in servers.get('per_server', [])) or '?'} per process); "
            f"{s(servers.get('lost'))} answers lost",
            f"{s(servers.get('replayed_elsewhere'))} of the {s(servers.get('lost'))} lost answers given again, byte "
            f"for byte, by the other process; the session's count {s(servers.get('applied'))}; updates and final "
            "LSTM state " + ({True: "bit-identical to", False: "NOT identical to", None: "? against"}[
                servers.get("identical")]) + " a sequential lopt replay",
            ["tests/faults/test_two_servers.py"], measured=["scale_out:servers"]),
        Row("scale-out", "two `l2o worker` processes on one PostgreSQL draining ten queued jobs",
            f"{s(workers.get('jobs'))} jobs, {s(workers.get('workers'))} workers",
            f"{s(workers.get('succeeded'))} succeeded in {s(workers.get('runs'))} runs (claims) in all; "
            f"{s(workers.get('versions'))} registry versions; {s(workers.get('tasks_once'))} of "
            f"{s(workers.get('tasks'))} queue tasks succeeded at their first attempt",
            ["tests/jobs/test_scale_out.py"], measured=["scale_out:workers"]),
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
        out.append(Row("load", "concurrent clients, answers dropped", "-", "the bench did not produce a result",
                       ["bench/load.py"], "FAILED"))
    out += [
        Row("attack", "every route fuzzed from the OpenAPI schema (schemathesis, valid and invalid inputs, a "
            "quarter of cases spiced with 2^63, 10^4000 and control characters), with a valid admin key",
            f"{s(fuzz.get('cases'))} cases over the {s(fuzz.get('operations'))} operations "
            f"({s(sum(fuzz.get('spiced', {}).values()) if fuzz else None)} spiced)",
            f"{s(fuzz.get('server_errors'))} 5xx, {s(fuzz.get('dropped'))} dropped connections; every answer "
            f"matched the schema. Statuses: {statuses or '?'}", ["tests/security/test_fuzz.py"]),
        Row("attack", "step numbers past 64 bits (2^63, 5,000 digits) in JSON and safetensors, from one key, while "
            "another key steps four sessions (issue 20 item 4)",
            f"{s(numbers.get('huge_steps'))} huge steps beside {s(numbers.get('other_key_steps'))} ordinary ones",
            f"{s(numbers.get('huge_422'))} answered 422; {s(numbers.get('other_key_ok'))} of the other key's steps "
            "applied (200)", ["tests/security/test_numbers.py"]),
        Row("attack", "version numbers past the database's INTEGER (2^31, 2^63, 5,000 digits) in references and "
            "paths", f"{s(versions.get('values'))} values x {s(versions.get('routes'))} routes",
            "422 invalid_reference / validation_error each; no session opened", ["tests/security/test_numbers.py"]),
        Row("attack", "control characters (\\n, \\r, \\x00, \\t, ESC, DEL, NEL, U+2028...) in every name-bearing "
            "field of every route, over real HTTP (issue 20 item 8)",
            f"{len(CONTROLS)} characters x {len(ALL_ROUTES)} routes: "
            f"{sum(c.get('requests', 0) for c in controls) or '?'} requests",
            "an answer to each (no dropped connection, no 5xx, no control character in a response header); names "
            "refused with a 4xx; nothing stored", ["tests/security/test_control_characters.py",
                                                 "tests/registry/test_names.py"]),
        Row("attack", "a revoked key during a database outage (issue 20 item 9)",
            "revoked through the API, and revoked elsewhere then refused once here; then the key check fails",
            f"refused during the outage ({s(revoked.get('status_during_outage'))}), never let in by the grace cache",
            ["tests/security/test_revocation.py"]),
        Row("attack", "connections sending half a header (issue 20 item 10)",
            f"{s(slow_header.get('connections'))} connections, L2O_HEADER_TIMEOUT_S={s(slow_header.get('timeout_s'))}",
            f"each answered 408 and closed, the last after {s(slow_header.get('closed_after_s'), '{:.1f}')} s; "
            "/healthz served meanwhile", ["tests/faults/test_slow_connections.py::test_half_a_header"]),
        Row("attack", "bodies declaring 16 MiB and sending one byte (issue 20 item 10)",
            f"{s(slow_body.get('connections'))} connections, L2O_BODY_TIMEOUT_S={s(slow_body.get('timeout_s'))}",
            f"each answered 408 and closed, the last after {s(slow_body.get('closed_after_s'), '{:.1f}')} s; the "
            f"server's resident memory {mib(slow_body.get('rss_before'))} before, at most "
            f"{mib(slow_body.get('rss_peak'))} meanwhile (sampled), {mib(slow_body.get('rss_after'))} after; "
            f"another key's GET /v1/optimizers took {s(slow_body.get('other_ms'), '{:.0f}')} ms meanwhile",
            ["tests/faults/test_slow_connections.py::test_a_declared_16_mib_body"]),
        Row("attack", "event streams from one key, and in all (issue 20 item 11)",
            "the per-key and total caps filled, one more each; one closed; a stream on an unchanging job",
            f"429 rate_limited with Retry-After over each cap; the slot back once one closed; the idle stream ended "
            f"after {s(idle.get('ended_after_s'), '{:.1f}')} s (L2O_EVENTS_IDLE_TIMEOUT_S="
            f"{s(idle.get('idle_timeout_s'))})", ["tests/security/test_event_streams.py"]),
        Row("attack", "sessions of many long names and empty shapes; state larger than the server's room "
            "(issue 20 items 2 and 5)",
            f"sessions of {s(quota.get('state_bytes'))} state bytes and {s(quota.get('held_bytes'))} held bytes "
            f"against a per-key quota of {s(quota.get('quota'))}; a {s(priced.get('requested'))}-byte state",
            "names, name bytes and shape entries refused over their limits (422); the quota refused the 4th session "
            "(429) and not another key's; the oversized state refused (503) with "
            f"{s(priced.get('allocated_before_refusal'))} states allocated before the refusal; the list of "
            "sessions answered a page at a time",
            ["tests/security/test_session_limits.py"]),
        Row("attack", "job specs priced to exhaust memory: the issue's (MLP 256 x 256, batch 512, 64 instances) "
            "and 8 x 4096 hidden units with 65,536 instances (issue 20 item 1)",
            f"{len(priced_jobs)} specs from a train key, on SQLite and on PostgreSQL",
            (" and ".join(f"{j['status']}" for j in priced_jobs) or "?") + " validation_error naming "
            "training.instances and L2O_JOB_MAX_MEMORY_BYTES; estimates "
            + (", ".join(f"{j['estimate_bytes'] / 2**30:,.0f} GiB" for j in priced_jobs) or "?")
            + " against the limit of " + (f"{priced_jobs[0]['limit_bytes'] / 2**30:.0f} GiB" if priced_jobs else "?")
            + "; no job created",
            ["tests/jobs/test_price.py"], measured=["jobs:priced"]),
        Row("attack", "a train key publishing names it did not create (a shipped optimizer, another key's name) "
            "with output scale -50 (issue 20 item 6)",
            "2 submissions from the attacking key; a name taken by another key while a job waited",
            f"{' and '.join(map(str, publish.get('statuses', []))) or '?'} forbidden at submission naming the "
            f"'admin' scope, {s(publish.get('jobs_created'))} jobs created, the shipped name still at "
            f"{s(publish.get('shipped_versions'))} version; the waiting job failed at publishing; the name's "
            "creator and an admin key published", ["tests/jobs/test_publish_scope.py"],
            measured=["jobs:publish_scope"]),
        Row("attack", "steps declaring more than their session's gradients can take, to an unknown session, and "
            "chunked without end (issue 20 item 3)",
            f"{len(declared)} declared sizes (JSON and safetensors), an unknown session, a chunked body",
            f"413 before a byte was read (read: {', '.join(str(d.get('read')) for d in declared) or '?'} bytes); "
            f"404 unread for the unknown session; the chunked body cut after {s(chunked.get('read'))} bytes "
            f"(limit {s(chunked.get('limit'))})", ["tests/security/test_step_body.py"]),
        Row("attack", "malformed safetensors on the step: header length beyond the body or 2^63, nesting 20k deep, "
            "duplicate names, overlapping/reversed/out-of-range offsets, holes, shape/byte mismatch, 2^80-element "
            "shapes, wrong dtypes, bad metadata; missing/misshapen/NaN gradients",
            f"{s(first(records, 'malformed:step').get('cases'))} bodies",
            "the status and code listed for each (4xx, 413 for a body longer than the session can take), naming "
            "the problem; the session's state byte-identical afterwards and still steppable",
            ["tests/security/test_malformed.py::test_malformed_step"]),
        Row("attack", "the same, and forged states (wrong dtype, shape, version, nested shapes), on session resume",
            f"{s(first(records, 'malformed:state').get('cases'))} bodies",
            "a 4xx each (the listed status and code for the forged states); no session opened",
            ["tests/security/test_malformed.py::test_malformed_states"]),
        Row("attack", "malformed checkpoints on upload: the bodies above, truncated data, garbage header, no/bad/"
            "out-of-range config, missing/extra/misshapen/integer/NaN weights, weights that blow up, bad config "
            "headers", f"{s(first(records, 'malformed:checkpoint').get('cases'))} uploads",
            "422 invalid_checkpoint each (status and code checked), 400 for a bad config header; nothing stored",
            ["tests/security/test_malformed.py::test_malformed_checkpoints",
             "tests/security/test_malformed.py::test_a_config_header"]),
        Row("attack", "memory through lying sizes: every malformed body, state and checkpoint above, and session "
            "shapes of 2^80 coordinates, sent to a real `l2o serve`",
            f"{s(memory.get('requests'))} requests",
            f"the server's resident memory (current, sampled every millisecond) {mib(memory.get('baseline'))} "
            f"before, at most {mib(memory.get('peak'))} meanwhile: {mib(memory.get('growth'))} of growth",
            ["tests/security/test_malformed.py::test_lying_sizes",
             "tests/security/test_malformed.py::test_the_sampler"]),
        Row("attack", "bodies over the limit sent chunked (no Content-Length), offering 1 GiB",
            f"{len(limits)} routes ({', '.join(r['path'] for r in limits) or '?'})",
            "413 payload_too_large naming the setting; the app read at most "
            + (f"{max(r['read'] - r['limit'] for r in limits) / 1024:.0f} KiB past the limit" if limits else "?"),
            ["tests/security/test_body_limits.py"]),
        Row("attack", "per-key rate limit (token bucket; in Redis with the Redis store)",
            "bursts over the limit from one key, beside another key; two app instances in one process on one Redis",
            "429 rate_limited with Retry-After; other keys unaffected; the budget shared by the two app instances",
            ["tests/security/test_rate_limits.py"]),
        Row("attack", "no key, wrong key, revoked key, malformed header, missing scope, on every route",
            f"{len(ROUTES)} routes x 4 credentials; each scope withheld, against one table of {len(SCOPES)} "
            "expected scopes (a route missing from it fails)",
            "401 on every route; 403 exactly where the table's scope is missing, and a key holding only that "
            "scope admitted", ["tests/api/test_auth.py"]),
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
        Row("attack", "how the key is checked", "the check's code path (a spy on hmac.compare_digest; nothing is "
            "timed)", "looked up by sha256, then compared with hmac.compare_digest",
            ["tests/security/test_keys.py::test_a_key_is_checked"]),
        Row("attack", "`l2o serve --workers 2` and L2O_WORKERS=2 on the memory store; a worker count of 0 or x "
            "(issue 20 item 12)", "4 invocations as real processes, and the flags' reach into each worker",
            "one line on stderr and a non-zero exit each, no traceback; with Redis every worker gets the flags' "
            "settings", ["tests/cli/test_serve_workers.py"]),
        Row("attack", "Client(\"https://elsewhere\") and other non-local hosts with the local admin.key present "
            "(issue 20 item 13)", "6 other hosts, 4 local ones",
            "no request sent and a clear error for other hosts; the key sent to loopback hosts only",
            ["tests/client/test_admin_key.py"]),
        Row("attack", "/readyz without a key or with a non-admin key; an aborted upload (issue 20 item 14)",
            "anonymous, non-admin and admin readiness while a check fails; one upload cut off mid-body",
            "readiness and failing check names to anyone, what each check found to admin keys only; the abort "
            "logged as one WARNING line, no ERROR, no traceback",
            ["tests/api/test_health.py", "tests/security/test_disconnects.py"]),
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
            row.status = settle(row, outcomes, records)
    counts = {s: sum(1 for _, v in outcomes if v == s) for s in ("passed", "failed", "skipped")}
    meta = {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "commit": git_commit(),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
            "tests": len(outcomes), **counts, "tests_s": tests_s, "load_s": load_s}
    args.out.write_text(markdown(report, meta))
    print(args.out.read_text())
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "rows": [vars(r) for r in report], "records": records,
                                         "load": load, "outcomes": outcomes}, indent=2, default=str) + "\n")
    ok = counts["failed"] == 0 and all(r.status == "passed" for r in report)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
