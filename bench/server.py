"""`l2o serve` as a real process on 127.0.0.1 for the benchmarks that go over the wire.

    with Server(workdir, store="memory", env={"L2O_SESSION_MAX_PER_KEY": "64"}) as server:
        Client(server.url, api_key=server.admin_key) ...

The server runs on the embedded SQLite in a scratch data directory, with a freshly initialised LSTM of
the paper's size (seed 0, as bench.step uses in-process) registered as `bench-lstm`.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import torch

from service.lopt import Checkpoint, CoordinatewiseLSTM, OptimizerConfig

REPO = Path(__file__).resolve().parents[1]
OPTIMIZER = "bench-lstm"
READY_TIMEOUT_S = 300   # a first start on a GPU compiles the step (torch.compile) before it is ready


class Server:
    """`l2o serve` on a free port of 127.0.0.1, in a scratch data directory; `env` adds settings."""

    def __init__(self, workdir: Path, store: str = "memory", env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        checkpoint = Checkpoint(OptimizerConfig(), {k: v.detach() for k, v in CoordinatewiseLSTM(
            OptimizerConfig(), generator=torch.Generator().manual_seed(0)).weights().items()})
        checkpoint.save(workdir / "pretrained" / OPTIMIZER)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "L2O_DATA_DIR": str(workdir / "data"), "L2O_PRETRAINED_DIR": str(workdir / "pretrained"),
               "L2O_SESSION_STORE": store, "L2O_SESSION_KEY_PREFIX": f"l2o-bench:{uuid.uuid4().hex}:",
               "L2O_LOG_LEVEL": "warning", "L2O_PORT": str(self.port), **(env or {})}
        env.pop("L2O_DATABASE_URL", None)
        self.log = (workdir / "serve.log").open("wb")
        command = "import sys; from service.cli import main; sys.exit(main(['serve']))"
        began = time.perf_counter()
        self.proc = subprocess.Popen([sys.executable, "-c", command], cwd=REPO, env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"l2o serve exited: {(workdir / 'serve.log').read_text()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"l2o serve did not become ready in {READY_TIMEOUT_S} s")
            time.sleep(0.05)
        self.ready_s = time.perf_counter() - began   # process start to the first ready answer
        self.admin_key = (workdir / "data" / "admin.key").read_text().strip()
        self.checkpoint = (workdir / "pretrained" / OPTIMIZER / "weights.safetensors").read_bytes()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
