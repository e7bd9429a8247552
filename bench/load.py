"""Load with lost answers: `python -m bench.load [--clients 64] [--steps 200] [--drop 0.05] [--json PATH]`.

Starts `l2o serve` on 127.0.0.1 (embedded SQLite, the memory session store or --store redis://..., and a
freshly initialised LSTM of the paper's size registered as `bench-lstm`), gives each client its own API key
and session, and runs the clients concurrently (one AsyncClient each), every client stepping --steps times.
Each client's transport throws away a fraction (--drop) of the step answers after the server has applied
the step, so the SDK retries them and the server must replay the stored answer rather than apply the step
again. At the end every session is checked against a sequential replay of the same gradients with
service.lopt: the step count, every update and the final LSTM state must be bit-identical.

Prints a table (errors, steps applied, answers dropped, step latency p50/p95/p99 as the training loop sees
it, retries included, and the round-trip latency of single requests) and, with --json, writes the numbers.
Bounded in count (--clients x --steps) and in time (--timeout; past it the run stops and reports failure).

    python -m bench.load --json bench-load.json
    python -m bench.load --clients 8 --steps 50 --store redis://127.0.0.1:6379/0
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch

from bench.server import OPTIMIZER, Server
from client import AsyncClient
from client.types import SessionState
from service import lopt
from service.lopt import Checkpoint

SHAPES = {"fc1.weight": [32, 16], "fc1.bias": [32], "fc2.weight": [1, 32], "fc2.bias": [1]}


# --- the clients -------------------------------------------------------------------------------------------------

class DroppingTransport(httpx.AsyncBaseTransport):
    """Loses a fraction of step answers on the way back: the server applied the step, the client never
    hears of it, as when a connection breaks after the request went out."""

    def __init__(self, rate: float, seed: int, inner: httpx.AsyncBaseTransport | None = None) -> None:
        self.inner = inner or httpx.AsyncHTTPTransport()
        self.rate, self.rng = rate, random.Random(seed)
        self.dropped = 0
        self.lost: list[bytes] = []   # the answers thrown away: a retry must be answered with these bytes
        self.round_trips: list[float] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        began = time.perf_counter()
        response = await self.inner.handle_async_request(request)
        if request.url.path.endswith("/step"):
            await response.aread()
            self.round_trips.append(time.perf_counter() - began)
            if self.rng.random() < self.rate:
                await response.aclose()
                self.dropped += 1
                self.lost.append(response.content)
                raise httpx.ReadError("answer dropped on purpose by the load bench", request=request)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


def grads(client: int, step: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([client, step])
    return {name: rng.standard_normal(shape, dtype=np.float32) * 0.1 for name, shape in SHAPES.items()}


@dataclass
class ClientRun:
    index: int
    latencies: list[float] = field(default_factory=list)
    updates_sha256: str = ""
    final: SessionState | None = None
    session_step: int | None = None
    error: str | None = None
    dropped: int = 0
    round_trips: list[float] = field(default_factory=list)


async def run_client(index: int, url: str, key: str, steps: int, drop: float, start: asyncio.Event,
                     opened: asyncio.Queue) -> ClientRun:
    run = ClientRun(index)
    transport = DroppingTransport(drop, seed=index)
    digest = hashlib.sha256()
    ready = False
    try:
        async with AsyncClient(url, key, transport=transport, max_retries=8) as l2o:
            session = await l2o.sessions.create(OPTIMIZER, SHAPES)
            ready = True
            opened.put_nowait(index)
            await start.wait()
            for i in range(steps):
                began = time.perf_counter()
                result = await l2o.sessions.step(session.id, step=i, grads=grads(index, i))
                run.latencies.append(time.perf_counter() - began)
                if result.step != i + 1:
                    raise AssertionError(f"step {i} answered with step count {result.step}")
                for name in SHAPES:
                    digest.update(np.ascontiguousarray(result.updates[name], dtype=np.float32).tobytes())
            run.final = await l2o.sessions.state(session.id)
            run.session_step = (await l2o.sessions.get(session.id)).step
            await l2o.sessions.delete(session.id)
    except Exception as exc:  # a client's failure is a result to report, not a crash of the bench
        run.error = f"{type(exc).__name__}: {exc}"
    if not ready:
        opened.put_nowait(index)   # it will not step: the others need not wait for it
    run.updates_sha256 = digest.hexdigest()
    run.dropped, run.round_trips = transport.dropped, transport.round_trips
    return run


def replay(checkpoint: bytes, index: int, steps: int) -> tuple[str, np.ndarray]:
    """The same client's run, step after step, with service.lopt in this process: its updates' digest and
    its final LSTM state."""
    ckpt = Checkpoint.from_bytes(checkpoint)
    weights = {k: v.to(torch.float32).contiguous() for k, v in ckpt.weights.items()}
    sizes = [int(np.prod(s)) for s in SHAPES.values()]
    state = lopt.init(ckpt.config, sum(sizes))
    digest = hashlib.sha256()
    with torch.no_grad():
        for i in range(steps):
            g = grads(index, i)
            flat = torch.cat([torch.from_numpy(g[name]).reshape(-1) for name in SHAPES])
            updates, state = lopt.step(ckpt.config, weights, flat, state)
            for part in updates.split(sizes):
                digest.update(part.numpy().tobytes())
    return digest.hexdigest(), state.hc.numpy()


async def make_keys(url: str, admin_key: str, n: int) -> list[str]:
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {admin_key}"}) as http:
        out = []
        for i in range(n):
            r = await http.post("/v1/keys", json={"name": f"load-{i}", "scopes": ["optimize"]})
            r.raise_for_status()
            out.append(r.json()["key"])
        return out


async def load(url: str, admin_key: str, clients: int, steps: int, drop: float) -> tuple[list[ClientRun], float]:
    keys = await make_keys(url, admin_key, clients)
    start, opened = asyncio.Event(), asyncio.Queue()
    tasks = [asyncio.create_task(run_client(i, url, keys[i], steps, drop, start, opened)) for i in range(clients)]
    for _ in range(clients):   # every session opened (or its client failed): the timed part is the steps alone
        await opened.get()
    began = time.perf_counter()
    start.set()
    runs = await asyncio.gather(*tasks)
    return runs, time.perf_counter() - began


# --- the report ---------------------------------------------------------------------------------------------------

def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000 if values else float("nan")


def summarize(runs: list[ClientRun], checkpoint: bytes, clients: int, steps: int, drop: float, wall: float,
              store: str) -> dict[str, Any]:
    mismatches = []
    for run in runs:
        if run.error is not None:
            continue
        digest, hc = replay(checkpoint, run.index, steps)
        problems = []
        if run.session_step != steps or run.final is None or run.final.step != steps:
            problems.append(f"step count {run.session_step}, expected {steps}")
        if run.updates_sha256 != digest:
            problems.append("updates differ from the replay")
        if run.final is not None and not np.array_equal(np.asarray(run.final.hc), hc):
            problems.append("final LSTM state differs from the replay")
        if problems:
            mismatches.append({"client": run.index, "problems": problems})
    latencies = [x for r in runs for x in r.latencies]
    trips = [x for r in runs for x in r.round_trips]
    applied = sum(len(r.latencies) for r in runs if r.error is None)
    return {
        "clients": clients, "steps_per_client": steps, "drop_rate": drop, "store": store,
        "coordinates_per_session": int(sum(np.prod(s) for s in SHAPES.values())),
        "errors": [{"client": r.index, "error": r.error} for r in runs if r.error is not None],
        "steps_applied": applied, "steps_expected": clients * steps,
        "answers_dropped": sum(r.dropped for r in runs),
        "mismatches": mismatches,
        "step_latency_ms": {"p50": percentile(latencies, 50), "p95": percentile(latencies, 95),
                            "p99": percentile(latencies, 99), "max": max(latencies, default=0) * 1000},
        "round_trip_ms": {"p50": percentile(trips, 50), "p99": percentile(trips, 99)},
        "wall_s": wall, "steps_per_s": applied / wall if wall else 0.0,
        "ok": not mismatches and all(r.error is None for r in runs) and applied == clients * steps,
    }


def table(result: dict[str, Any]) -> str:
    lat, rt = result["step_latency_ms"], result["round_trip_ms"]
    rows = [
        ("clients x steps", f"{result['clients']} x {result['steps_per_client']} "
                            f"({result['coordinates_per_session']} coordinates each, {result['store']} store)"),
        ("answers dropped", f"{result['answers_dropped']} ({result['drop_rate']:.0%} asked), each retried"),
        ("errors", str(len(result["errors"]))),
        ("steps applied", f"{result['steps_applied']} of {result['steps_expected']}"),
        ("mismatches vs replay", str(len(result["mismatches"]))),
        ("step latency (ms)", f"p50 {lat['p50']:.1f}  p95 {lat['p95']:.1f}  p99 {lat['p99']:.1f}  "
                              f"max {lat['max']:.1f}   (retries included)"),
        ("round trip (ms)", f"p50 {rt['p50']:.1f}  p99 {rt['p99']:.1f}   (one request)"),
        ("throughput", f"{result['steps_per_s']:.0f} steps/s over {result['wall_s']:.1f} s"),
        ("result", "OK: every step applied exactly once" if result["ok"] else "FAILED"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--drop", type=float, default=0.05, help="fraction of step answers lost on purpose")
    parser.add_argument("--store", default="memory", help="the server's L2O_SESSION_STORE (memory or redis://...)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds the run may take at most")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    if not (1 <= args.clients <= 1024 and 1 <= args.steps <= 100_000 and 0 <= args.drop < 1):
        parser.error("--clients must be 1..1024, --steps 1..100000 and --drop in [0, 1)")
    with tempfile.TemporaryDirectory(prefix="l2o-load-") as tmp:
        server = Server(Path(tmp), args.store)
        try:
            runs, wall = asyncio.run(asyncio.wait_for(
                load(server.url, server.admin_key, args.clients, args.steps, args.drop), args.timeout))
        except TimeoutError:
            raise SystemExit(f"the load run did not finish in {args.timeout:.0f} s") from None
        finally:
            server.stop()
        result = summarize(runs, server.checkpoint, args.clients, args.steps, args.drop, wall, args.store)
    print(table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if not result["ok"]:
        raise SystemExit(1)
    return result


if __name__ == "__main__":
    main()
