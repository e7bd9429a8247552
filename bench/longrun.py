"""Does a learned optimizer stay stable far past its meta-training horizon? On the mixture's own
validation draws (never the held-out suite), for choosing between recipes and seeds.

    python -m bench.longrun --optimizer NAME=DIR [...] [--steps 5000] [--problems 16] [--json PATH]

Each problem is a mixture draw from the validation split (seeds 10,000 + k, which meta-training's own
validation does not use), with 2 instances. Reported per optimizer, beside Adam at 1e-3 and 3e-3: the
geometric mean over problems of (loss ÷ the better Adam's loss) at a few steps, and divergences (a
non-finite loss, or one above the initial loss, at any recorded step).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

from bench.generalization import diverged_runs, learned_optimizer, record_points, run, torch_optimizer
from service.lopt import Checkpoint
from service.tasks.mixture import MixtureFamily

SEED_BASE = 10_000
ADAM_LRS = (1e-3, 3e-3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--optimizer", action="append", required=True, metavar="NAME=DIR")
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--problems", type=int, default=16)
    parser.add_argument("--instances", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    learned = {}
    for item in args.optimizer:
        name, _, folder = item.partition("=")
        learned[name] = Checkpoint.load(folder)
    family = MixtureFamily(max_coords=50_000)
    report = sorted({100, 1000, args.steps} & set(range(1, args.steps + 1)))
    points = sorted(set(record_points(args.steps)) | set(report))
    rows = []
    began = time.perf_counter()
    for k in range(args.problems):
        batch = family.sample(args.instances, SEED_BASE + k, "validation")
        # One run per learning rate: the mixture's quadratics are not FunctionalBatches, so no Tiled.
        curves = {f"adam-{lr:g}": run(batch, torch_optimizer("adam", [lr]), points) for lr in ADAM_LRS}
        for name, ckpt in learned.items():
            curves[name] = run(batch, learned_optimizer(ckpt), points)
        initial = curves["adam-0.001"][0]
        row = {"problem": k, "spec": {a: b for a, b in batch.description.items() if a != "data_seed"},
               "loss": {}, "diverged": {}}
        for name, c in curves.items():
            row["loss"][name] = {str(t): float(c[points.index(t)].mean()) for t in report}
            row["diverged"][name] = diverged_runs(c, initial)
        rows.append(row)
        print(f"problem {k} {row['spec']['kind']}: " + ", ".join(
            f"{n} {row['loss'][n][str(args.steps)]:.3g}{'!' * row['diverged'][n]}" for n in curves),
            file=sys.stderr, flush=True)
    names = list(rows[0]["loss"])
    summary = {}
    for name in names:
        geo = {}
        for t in report:
            logs = []
            for r in rows:
                best = min(r["loss"][f"adam-{lr:g}"][str(t)] for lr in ADAM_LRS)
                v = r["loss"][name][str(t)]
                logs.append(math.log(max(v, 1e-30) / max(best, 1e-30)) if math.isfinite(v) else math.inf)
            geo[str(t)] = math.exp(sum(logs) / len(logs)) if all(map(math.isfinite, logs)) else math.inf
        summary[name] = {"geomean_vs_best_adam": geo, "divergences": sum(r["diverged"][name] for r in rows)}
    print(f"{'optimizer':<28}" + "".join(f"{'step ' + str(t):>12}" for t in report) + f"{'diverged':>10}")
    for name, s in summary.items():
        print(f"{name:<28}" + "".join(f"{s['geomean_vs_best_adam'][str(t)]:>12.3g}" for t in report)
              + f"{s['divergences']:>7}/{args.problems * args.instances}")
    print(f"{args.problems} validation problems, {time.perf_counter() - began:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"command": "python -m bench.longrun " + " ".join(
            sys.argv[1:] if argv is None else argv), "summary": summary, "problems": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
