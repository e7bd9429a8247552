"""Meta-training throughput, like for like: `python -m bench.metatrain [--quick] [--json PATH]`.

For each shipped recipe (the quadratic and digits LSTMs, the mixture's feature MLP), optimizee steps per
second of the meta-training loop itself (unrolls, meta-gradient, clipped Adam step on the optimizer's
weights; no validation, no checkpoints), timed the same way, on the same instances, for:

    fast, batched             `run_unroll` on the recipe's batch of instances: what `l2o train` runs
    straightforward, batched  `naive_unroll` on the same batch: a backward pass through the whole unroll
                              at every optimizee step, to read ∂f/∂θ
    fast, one at a time       `run_unroll` on the same instances, one instance per batch

The code's gain is fast ÷ straightforward on the same batch; batching's gain is batched ÷ one at a time,
both with the fast code. A whole `l2o train` run (validation, checkpoints) is slower than the first row:
`bench.paper` reports that figure. Each figure is the median of `--repeats` timings after an untimed one.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from service.lopt import CoordinatewiseLSTM, OptimizerConfig, init
from service.metatrain.naive import naive_unroll
from service.metatrain.unroll import Trajectory, run_unroll
from service.tasks import make_family


@dataclass(frozen=True)
class Recipe:
    name: str
    config: OptimizerConfig
    family: str
    params: dict[str, Any] = field(default_factory=dict)
    instances: int = 32
    horizon: int = 100
    unroll: int = 20


# The shipped checkpoints' recipes (their configs hold the commands), at one fixed horizon each: the
# mixture draws its horizons up to 2,000, but a step costs the same at any point of a trajectory.
RECIPES = [
    Recipe("quadratic, LSTM", OptimizerConfig(), "quadratic", instances=128),
    Recipe("digits MLP, LSTM", OptimizerConfig(), "mlp", instances=16),
    Recipe("mixture, feature MLP", OptimizerConfig(architecture="feature_mlp", hidden_size=32, num_layers=2,
                                                   output_scale=0.003),
           "mixture", {"max_coords": 50_000}, instances=4, horizon=50, unroll=25),
]

Unroll = Callable[[CoordinatewiseLSTM, Any, Trajectory, int], tuple[torch.Tensor, Trajectory]]


def fast_unroll(net: CoordinatewiseLSTM, batch: Any, traj: Trajectory, unroll: int) -> tuple[torch.Tensor, Trajectory]:
    return run_unroll(net.config, net.weights(), batch, traj, unroll)


def steps_per_s(recipe: Recipe, unroll_fn: Unroll, batches: list[Any]) -> float:
    """Optimizee steps per second of meta-training over `batches`, each run for the recipe's horizon."""
    net = CoordinatewiseLSTM(recipe.config, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    steps = 0
    began = time.perf_counter()
    for batch in batches:
        theta = batch.init_params()
        traj = Trajectory(theta, init(recipe.config, theta.numel()), 0)
        for _ in range(recipe.horizon // recipe.unroll):
            meta_loss, traj = unroll_fn(net, batch, traj, recipe.unroll)
            opt.zero_grad(set_to_none=True)
            meta_loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            traj = traj.detach()
        steps += recipe.horizon * theta.shape[0]
    return steps / (time.perf_counter() - began)


def measure(recipe: Recipe, repeats: int, single_cap: int) -> dict[str, Any]:
    family = make_family(recipe.family, **recipe.params)
    seed = 7
    batched = [family.sample(recipe.instances, seed, "train")]
    # The same draw, an instance at a time (a mixture's draw is one problem for every instance of a seed).
    singles = [family.sample(1, seed, "train") for _ in range(min(recipe.instances, single_cap))]
    contenders = {"fast_batched": (fast_unroll, batched), "straightforward_batched": (naive_unroll, batched),
                  "fast_one_at_a_time": (fast_unroll, singles)}
    row: dict[str, Any] = {"recipe": recipe.name, "instances": recipe.instances, "horizon": recipe.horizon,
                           "unroll": recipe.unroll, "coordinates": int(batched[0].init_params().numel())}
    for name, (fn, batches) in contenders.items():
        steps_per_s(recipe, fn, batches[:1])  # untimed: first calls, allocator warm-up
        timings = [steps_per_s(recipe, fn, batches) for _ in range(repeats)]
        row[name] = statistics.median(timings)
        row[name + "_runs"] = timings
        print(f"  {recipe.name}: {name} {row[name]:,.0f} optimizee steps/s", file=sys.stderr, flush=True)
    row["code_gain"] = row["fast_batched"] / row["straightforward_batched"]
    row["batching_gain"] = row["fast_batched"] / row["fast_one_at_a_time"]
    return row


def print_table(rows: list[dict[str, Any]]) -> None:
    head = (f"{'recipe':<22} {'instances':>9} {'fast, batched':>14} {'straightforward':>16} "
            f"{'fast, one at a time':>20} {'code gain':>10} {'batching gain':>14}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['recipe']:<22} {r['instances']:>9} {r['fast_batched']:>14,.0f} "
              f"{r['straightforward_batched']:>16,.0f} {r['fast_one_at_a_time']:>20,.0f} "
              f"{r['code_gain']:>9.1f}x {r['batching_gain']:>13.1f}x")
    print("optimizee steps per second; code gain = fast ÷ straightforward on the same batch, "
          "batching gain = batched ÷ one at a time with the fast code")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one timing each, 4 single instances at most")
    parser.add_argument("--repeats", type=int, default=3, help="timings per contender (median reported)")
    parser.add_argument("--json", type=Path, help="write the rows here")
    args = parser.parse_args(argv)
    repeats, single_cap = (1, 4) if args.quick else (args.repeats, 16)
    rows = []
    for recipe in RECIPES:
        rows.append(measure(recipe, repeats, single_cap))
    print_table(rows)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "command": "python -m bench.metatrain " + " ".join(sys.argv[1:] if argv is None else argv),
            "torch_threads": torch.get_num_threads(), "machine": platform.machine(),
            "torch": torch.__version__, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
