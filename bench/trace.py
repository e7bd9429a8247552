"""Where a feature-MLP optimizer's step goes over a long run, read as the learning rate Adam would need.

    python -m bench.trace --optimizer DIR [--problem K ...] [--clean P] [--steps 5000] [--json PATH]

On the mixture's validation draws (bench.longrun's problems, never the held-out suite), each step's
effective learning rate per coordinate is |update| ÷ |m̂_0.9 / sqrt(v̂)|, the size of the rule's update
against Adam's own direction at β1 = 0.9 (the rule's state holds those moments), over coordinates where
Adam's direction is at least 1e-3. Reported at a few steps: the loss (mean over the instances), the median
and 90th percentile of the effective learning rate, and the median step memory where the rule has one,
beside tuned Adam's learning rate for that step (bench.longrun's tuning). A rule that starts as Adam at
base step η (its output layer at zero) has an effective learning rate of exactly η.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from bench.generalization import run
from bench.longrun import SEED_BASE, tune_adam
from service.lopt import Checkpoint, init, step
from service.lopt import feature_mlp as fm
from service.tasks.mixture import MixtureFamily

REPORT = (10, 100, 300, 1000, 2000, 3000, 5000)
ADAM_FLOOR = 1e-3   # coordinates where Adam's own direction is smaller say little about a learning rate


def trace(ckpt: Checkpoint, batch, points: list[int]) -> list[dict]:
    """One row per point: the loss there, and the effective learning rate of the step that led to it.
    The run is bench.generalization's, with the rule's state read after every step."""
    if ckpt.config.architecture != "feature_mlp":
        raise SystemExit("bench.trace reads Adam's moments from the rule's state: feature_mlp checkpoints only")
    weights = {k: v.detach() for k, v in ckpt.weights.items()}
    after: list[dict[str, float]] = []   # after[t - 1]: the t-th step's effective learning rate

    def make(theta0: torch.Tensor):
        state = init(ckpt.config, theta0.numel())

        def advance(theta: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
            nonlocal state
            updates, state = step(ckpt.config, weights, grad.reshape(-1), state)
            after.append(effective_lr(updates, state.hc))
            return theta + updates.view_as(theta)
        return advance

    losses = run(batch, make, points)
    return [{"step": t, "loss": float(loss.mean()), **(after[t - 1] if 0 < t <= len(after) else {})}
            for t, loss in zip(points, losses, strict=True)]


def effective_lr(updates: torch.Tensor, hc: torch.Tensor) -> dict[str, float]:
    s = hc.to(torch.float32)
    m_hat = s[:, 1] / s[:, 5]                                      # m_0.9 over its bias accumulator
    r = torch.rsqrt(s[:, 3] ** 2 / s[:, 7] + fm.TINY)              # 1 / sqrt(v̂)
    adam = (m_hat * r).abs()
    kept = adam >= ADAM_FLOOR
    lr = updates.abs()[kept] / adam[kept]
    out = {"lr_median": float(lr.median()), "lr_p90": float(lr.quantile(0.9))} if lr.numel() else {}
    if s.shape[1] > fm.N_STATE:
        out["memory_median"] = float(s[:, fm.N_STATE].median())
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--optimizer", type=Path, required=True, metavar="DIR")
    parser.add_argument("--problem", type=int, nargs="+", default=[1, 4, 7], metavar="K")
    parser.add_argument("--clean", type=float, default=0.0)
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--instances", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    ckpt = Checkpoint.load(args.optimizer)
    family = MixtureFamily(max_coords=50_000, clean=args.clean)
    points = sorted({0, args.steps} | {t for t in REPORT if t < args.steps})
    result = []
    for k in args.problem:
        batch = family.sample(args.instances, SEED_BASE + k, "validation")
        tuned = tune_adam(family, k, args.instances, points[1:], points)
        rows = trace(ckpt, batch, points)
        for row in rows[1:]:
            row["tuned_adam_lr"] = tuned[row["step"]]
        result.append({"problem": k, "kind": batch.description["kind"], "rows": rows})
        print(f"problem {k} ({batch.description['kind']})")
        print(f"  {'step':>6}{'loss':>12}{'lr median':>12}{'lr p90':>10}{'memory':>9}{'tuned Adam':>12}")
        for row in rows[1:]:
            print(f"  {row['step']:>6}{row['loss']:>12.4g}{row.get('lr_median', float('nan')):>12.4g}"
                  f"{row.get('lr_p90', float('nan')):>10.4g}{row.get('memory_median', float('nan')):>9.2f}"
                  f"{row['tuned_adam_lr']:>12g}", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"command": "python -m bench.trace " + " ".join(
            sys.argv[1:] if argv is None else argv), "problems": result}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
