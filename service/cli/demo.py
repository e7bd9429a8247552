"""`l2o demo`: the service end to end in about a minute.

It starts `l2o serve` on the embedded default (or uses the server at L2O_URL), opens a session on a
shipped optimizer, and trains a small MLP on scikit-learn's digits through RemoteOptimizer, beside the
same MLP from the same start trained with Adam at its tuned learning rate. It prints both loss curves,
writes them as a PNG plot, and submits a tiny meta-training job to show how training a new optimizer
works. Nothing is meta-trained up front: the optimizer is one the registry already holds.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PREFERRED = ("general-mlp", "digits-mlp-lstm", "quadratic-lstm")
DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_MLP = {"hidden_sizes": [20], "activation": "sigmoid", "batch_size": 128}
# A job that meta-trains in seconds on a CPU: enough to see it queued, running and published.
DEMO_JOB = {
    "name": "demo-quadratic",
    "family": {"name": "quadratic", "params": {"dim": 10}},
    "training": {"iterations": 20, "horizon": 20, "unroll": 10, "instances": 8, "eval_every": 10,
                 "eval_instances": 4, "resume_every": 10},
    "evaluation": {"instances": 8, "steps": 20, "tune_instances": 4, "lr_grid": [0.01, 0.1, 1.0],
                   "baselines": ["adam"]},
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="train a small model through the service beside tuned Adam; plot both",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("l2o-demo"),
                   help="folder for the plot (loss.png), the curves (curves.json) and the server log")
    p.add_argument("--steps", type=int, default=100, help="training steps of each optimizer")
    p.add_argument("--optimizer", help=f"registry reference to use (default: the first of {', '.join(PREFERRED)} "
                                       "the registry holds)")
    p.add_argument("--url", help="use the l2o server at this URL (default: L2O_URL, else start one)")
    p.add_argument("--no-job", action="store_true", help="do not submit the demo meta-training job")
    p.add_argument("--seed", type=int, default=0, help="seed of the model's initialisation and the data order")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.steps < 1:
        print("l2o demo: --steps must be at least 1", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    url = args.url or os.environ.get("L2O_URL")
    began = time.perf_counter()
    try:
        with (contextlib.nullcontext(url) if url else ServerProcess(args.out / "server.log")) as base_url:
            code = demo(args, base_url, own_server=not url)
    except DemoError as exc:
        print(f"l2o demo: {exc}", file=sys.stderr)
        return 1
    print(f"\ndemo finished in {time.perf_counter() - began:.0f} s")
    return code


class DemoError(Exception):
    """A problem to report as one line."""


# --- the server -------------------------------------------------------------------------------------------

class ServerProcess:
    """`l2o serve` on a free port of 127.0.0.1, in a child process, for as long as the `with` block runs.
    Its settings are the environment's: with none, the embedded default in the user's data directory."""

    def __init__(self, log_path: Path, *, env: dict[str, str] | None = None, ready_timeout: float = 120.0) -> None:
        self.log_path = log_path
        self.env = env
        self.ready_timeout = ready_timeout
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> str:
        import httpx

        cmd = [sys.executable, "-c", "import sys; from service.cli import main; sys.exit(main())",
               "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        print(f"starting `l2o serve` on {self.url} (log: {self.log_path})")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                         start_new_session=True)
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise DemoError(f"the server exited with status {self.proc.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.url}/readyz", timeout=2.0).status_code == 200:
                    return self.url
            time.sleep(0.2)
        self.__exit__(None, None, None)
        raise DemoError(f"the server was not ready after {self.ready_timeout:.0f} s:\n{self.log_tail()}")

    def __exit__(self, *exc: object) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)  # a graceful stop: the embedded worker hands its job back
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the demo ---------------------------------------------------------------------------------------------

@dataclass
class Curves:
    steps: list[int] = field(default_factory=list)
    l2o: list[float] = field(default_factory=list)
    adam: list[float] = field(default_factory=list)
    step_ms: list[float] = field(default_factory=list)


def demo(args: argparse.Namespace, base_url: str, *, own_server: bool) -> int:
    from client import APIError, Client, L2OError

    try:
        with Client(base_url) as l2o:
            version = pick_optimizer(l2o, args.optimizer)
            params = mlp_params(version.config or {})
            print(f"optimizer: {version.reference} (sha256 {version.sha256[:12]}...), "
                  f"meta-trained on {describe(version.config or {})}")
            if ((version.config or {}).get("trained_on") or {}).get("family") not in ("mlp", "mixture"):
                print("  (meta-trained on another task family: the paper finds such optimizers generalise only "
                      "so far, so expect it to trail Adam here)")
            print(f"task: an MLP {64}-{'-'.join(map(str, params['hidden_sizes']))}-10 ({params['activation']}) on "
                  f"scikit-learn's 8x8 digits, minibatches of {params['batch_size']}, {args.steps} steps")
            lr = tuned_adam_lr(params, args.steps, args.seed)
            print(f"Adam's learning rate, tuned over a grid on other instances: {lr:g}")
            curves = train_both(l2o, version.reference, params, lr, args.steps, args.seed)
            print_table(curves, version.reference, lr)
            plot = write_plot(curves, version.reference, lr, args.out / "loss.png")
            (args.out / "curves.json").write_text(json.dumps(
                {"optimizer": version.reference, "adam_lr": lr, "steps": curves.steps, "l2o": curves.l2o,
                 "adam": curves.adam, "step_ms": curves.step_ms}, indent=1) + "\n")
            print(f"\nwrote the plot to {plot.resolve()}")
            show_job(l2o, None if own_server else base_url, submit=own_server and not args.no_job)
    except (APIError, L2OError) as exc:
        raise DemoError(str(exc)) from exc
    return 0


def pick_optimizer(l2o: Any, reference: str | None) -> Any:
    if reference:
        return l2o.optimizers.resolve(reference)
    names = [o.name for o in l2o.optimizers.list() if o.latest_version is not None]
    for name in (*PREFERRED, *sorted(names)):
        if name in names:
            return l2o.optimizers.resolve(name)
    raise DemoError("the registry holds no optimizer: ship one in service/pretrained/<name>/ (weights.safetensors "
                    "and config.json), or meta-train one with `l2o jobs submit --name NAME --watch`")


def mlp_params(config: dict[str, Any]) -> dict[str, Any]:
    """The MLP the optimizer was meta-trained on, when it was trained on one; else the paper's (20 sigmoid units)."""
    trained = config.get("trained_on") or {}
    params = trained.get("params") or {} if trained.get("family") == "mlp" else {}
    return {k: params.get(k, v) for k, v in DEFAULT_MLP.items()}


def describe(config: dict[str, Any]) -> str:
    trained = config.get("trained_on") or {}
    if not trained:
        return "(not recorded)"
    params = ", ".join(f"{k}={v}" for k, v in (trained.get("params") or {}).items())
    return f"{trained.get('family')} ({params})"


def tuned_adam_lr(params: dict[str, Any], steps: int, seed: int) -> float:
    from service.metatrain.baselines import tune
    from service.tasks import make_family

    # Tuned on training instances with seeds of their own, as the paper tunes its baselines.
    return tune("adam", make_family("mlp", **params), steps=steps, n_instances=4, seed=seed + 1000).lr


def make_mlp(params: dict[str, Any]) -> Any:
    import torch

    from service.tasks.digits import N_CLASSES, N_FEATURES
    from service.tasks.mlp import ACTIVATIONS

    layers: list[torch.nn.Module] = []
    fan_in = N_FEATURES
    for width in params["hidden_sizes"]:
        layers += [torch.nn.Linear(fan_in, width), Activation(ACTIVATIONS[params["activation"]])]
        fan_in = width
    layers.append(torch.nn.Linear(fan_in, N_CLASSES))
    return torch.nn.Sequential(*layers)


def Activation(fn: Any) -> Any:  # noqa: N802 - a module factory, named like the module it makes
    import torch

    class _Activation(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return fn(x)

    return _Activation()


def train_both(l2o: Any, reference: str, params: dict[str, Any], lr: float, steps: int, seed: int) -> Curves:
    import torch
    import torch.nn.functional as F

    from client import RemoteOptimizer
    from service.tasks.digits import EVAL_IMAGES, digits_split

    x, y = digits_split("train")
    eval_x, eval_y = x[:EVAL_IMAGES], y[:EVAL_IMAGES]
    torch.manual_seed(seed)
    remote_model = make_mlp(params)
    adam_model = copy.deepcopy(remote_model)  # the same start for both
    remote = RemoteOptimizer(remote_model.named_parameters(), optimizer=reference, client=l2o)
    adam = torch.optim.Adam(adam_model.parameters(), lr=lr)
    batches = torch.Generator().manual_seed(seed)
    curves = Curves()

    def record(step: int) -> None:
        with torch.no_grad():
            curves.steps.append(step)
            curves.l2o.append(F.cross_entropy(remote_model(eval_x), eval_y).item())
            curves.adam.append(F.cross_entropy(adam_model(eval_x), eval_y).item())

    try:
        record(0)
        for step in range(1, steps + 1):
            idx = torch.randint(0, x.shape[0], (params["batch_size"],), generator=batches)
            for model, opt in ((remote_model, remote), (adam_model, adam)):
                opt.zero_grad()
                F.cross_entropy(model(x[idx]), y[idx]).backward()
                t = time.perf_counter()
                opt.step()
                if opt is remote:
                    curves.step_ms.append((time.perf_counter() - t) * 1000)
            record(step)
    finally:
        remote.close()  # delete the session: its state is no longer needed
    return curves


def print_table(curves: Curves, reference: str, lr: float) -> None:
    every = max(1, len(curves.steps) // 10)
    rows = [i for i in range(0, len(curves.steps), every)]
    if rows[-1] != len(curves.steps) - 1:
        rows.append(len(curves.steps) - 1)
    left, right = f"{reference} (remote)", f"Adam (lr {lr:g})"
    print(f"\ncross-entropy on {512} training images, same start, same minibatches:\n")
    wl, wr = max(len(left), 10), max(len(right), 10)
    print(f"{'step':>5}  {left:>{wl}}  {right:>{wr}}")
    for i in rows:
        print(f"{curves.steps[i]:>5}  {curves.l2o[i]:>{wl}.4f}  {curves.adam[i]:>{wr}.4f}")
    if curves.step_ms:
        print(f"\n{len(curves.step_ms)} remote steps: median {statistics.median(curves.step_ms):.1f} ms each "
              "(gradients out, updates back, over HTTP)")


def write_plot(curves: Curves, reference: str, lr: float, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(curves.steps, curves.l2o, label=f"{reference} via RemoteOptimizer")
    ax.plot(curves.steps, curves.adam, label=f"Adam, tuned lr {lr:g}")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (512 training images)")
    ax.set_yscale("log")
    ax.set_title("MLP on scikit-learn digits")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def show_job(l2o: Any, url: str | None, *, submit: bool) -> None:
    """Print how to submit a meta-training job (to `url`, or to `l2o serve`'s default address when the demo
    ran its own server, which is gone when it ends); with `submit`, submit a tiny one and follow it."""
    spec = json.dumps(DEMO_JOB, separators=(",", ":"))
    print("\nTo meta-train an optimizer of your own (the paper's setup unless you say otherwise), "
          + (f"on {url}:\n" if url else "start the server (`l2o serve`), then:\n"))
    print(f"  {'L2O_URL=' + url + ' ' if url else ''}l2o jobs submit --name my-quadratic --family quadratic "
          "--param dim=10 --set training.iterations=200 --watch")
    print(f"or over HTTP (this one is the tiny job the demo submits):\n"
          f"  curl -X POST {url or DEFAULT_URL}/v1/jobs -H \"Authorization: Bearer $(cat {key_file()})\" \\\n"
          f"       -H 'Content-Type: application/json' -d '{spec}'")
    if not submit:
        return
    job = l2o.jobs.submit(DEMO_JOB)
    print(f"\nsubmitted a tiny one: job {job.id} is {job.state} ({job.progress.total_iterations} iterations)")
    from client import APITimeoutError

    try:
        job = l2o.jobs.wait(job.id, progress=True, timeout=90)
    except APITimeoutError:
        job = l2o.jobs.cancel(job.id)
        print(f"job {job.id} was still {job.state} after 90 s; cancelled so it does not outlive the demo")
        return
    if job.state == "succeeded" and job.result is not None:
        report = l2o.optimizers.version(job.result.name, job.result.version).evaluation or {}
        print(f"job {job.id} {job.state}: published {job.result.reference}; open a session on it with "
              f"RemoteOptimizer(params, optimizer={job.result.reference!r})")
        for line in evaluation_lines(report):
            print(f"  {line}")
        print(f"  ({DEMO_JOB['training']['iterations']} meta-iterations make a demo, not a good optimizer: the "
              "shipped ones trained for many more, on more instances each)")
    else:
        print(f"job {job.id} ended {job.state}: {job.error or ''}")


def evaluation_lines(report: dict[str, Any]) -> Iterator[str]:
    """A line per optimizer of a job's evaluation report: its final held-out loss (and tuned learning rate)."""
    rates = report.get("learning_rates") or {}
    for name, value in sorted((report.get("final") or {}).items(), key=lambda kv: kv[1]):
        lr = f" (lr {rates[name]:g})" if name in rates else ""
        yield f"{name}{lr}: final loss {value:.4g} on {report.get('n_instances', '?')} held-out instances"


def key_file() -> Path:
    from client._base import data_dir

    return data_dir() / "admin.key"
