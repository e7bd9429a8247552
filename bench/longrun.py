"""Does a learned optimizer stay stable far past its meta-training horizon? On the mixture's own
validation draws (never the held-out suite), for choosing between recipes and seeds.

    python -m bench.longrun --optimizer NAME=DIR [...] [--steps 5000] [--problems 16] [--json PATH]
    python -m bench.longrun ... --only 0 1 2 3 --json a.json   (and --only 4 5 6 7 --json b.json beside it)
    python -m bench.longrun --merge a.json b.json [--json PATH]
    python -m bench.longrun --optimizer LATER=DIR --reuse a.json b.json ...   (runs only LATER)
    python -m bench.longrun --clean 1 ...   (the same draws, each teacher problem without noise: mixture clean=1)
    python -m bench.longrun --merge bench/results/longrun-tuned.json bench/results/longrun-clean.json
                            (the 13 problems recipes are chosen on: the optimizers both files hold)

Each problem is a mixture draw from the validation split (seeds 10,000 + k, which meta-training's own
validation does not use), with 2 instances. Reported per optimizer, beside Adam at 1e-3 and 3e-3 and
Adam tuned as the held-out suite tunes it (bench.generalization's grid, the best learning rate for each
reported step on other instances of the same problem): the geometric mean over problems of (loss ÷ the
better of the two Adams' loss) and of (loss ÷ tuned Adam's loss) at a few steps, and divergences (a
non-finite loss, or one above the initial loss, at any recorded step). Against tuned Adam, validation
asks what the held-out suite's targets ask. "score" is the rule recipes are chosen by (README): ln of the
geometric mean against tuned Adam at step 1,000 plus ln of it at the last step, lower is better.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import torch

from bench.generalization import (
    ADAM_GRID,
    best_lr_per_step,
    diverged_runs,
    learned_optimizer,
    record_points,
    run,
    torch_optimizer,
)
from service.lopt import Checkpoint
from service.tasks.mixture import MixtureFamily

SEED_BASE = 10_000
TUNE_INSTANCE_SEED = 20_000   # + k: the instances problem k's learning rate is tuned on
ADAM_LRS = (1e-3, 3e-3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--optimizer", action="append", default=[], metavar="NAME=DIR")
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--problems", type=int, default=16)
    parser.add_argument("--only", type=int, nargs="+", metavar="K",
                        help="run these of the problems only (one process per core; --merge combines them)")
    parser.add_argument("--instances", type=int, default=2)
    parser.add_argument("--merge", type=Path, nargs="+", metavar="JSON",
                        help="report on the problems of earlier runs' JSON (same steps) instead of running")
    parser.add_argument("--reuse", type=Path, nargs="+", default=[], metavar="JSON",
                        help="earlier runs (same steps and instances) whose rows supply every optimizer they hold")
    parser.add_argument("--clean", type=float, default=0.0, metavar="P",
                        help="the mixture's clean parameter for the draws (0: the standing validation problems)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    began = time.perf_counter()
    if args.merge:
        rows = sorted((r for path in args.merge for r in json.loads(path.read_text())["problems"]),
                      key=lambda r: r["problem"])
        report = [int(t) for t in rows[0]["loss"]["adam-tuned"]]
    elif args.optimizer:
        report = sorted({100, 1000, args.steps} & set(range(1, args.steps + 1)))
        rows = run_problems(args, report)
    else:
        parser.error("give --optimizer NAME=DIR (one or more) or --merge")
    names = [name for name in rows[0]["loss"] if all(name in r["loss"] for r in rows)]
    summary = {}
    for name in names:
        summary[name] = {
            "geomean_vs_best_adam": geomean(rows, name, report, lambda r, t: min(
                r["loss"][f"adam-{lr:g}"][str(t)] for lr in ADAM_LRS)),
            "geomean_vs_tuned_adam": geomean(rows, name, report, lambda r, t: r["loss"]["adam-tuned"][str(t)]),
            "divergences": sum(r["diverged"][name] for r in rows)}
        tuned = summary[name]["geomean_vs_tuned_adam"]
        if "1000" in tuned and report[-1] > 1000:
            summary[name]["score"] = math.log(tuned["1000"]) + math.log(tuned[str(report[-1])])
    runs = sum(r["runs"] for r in rows)
    steps = "".join(f"{'step ' + str(t):>10}" for t in report)
    print(f"{'':<24}{'vs the better of Adam 1e-3, 3e-3':^{10 * len(report)}}  {'vs tuned Adam':^{10 * len(report)}}")
    print(f"{'optimizer':<24}{steps}  {steps}{'diverged':>10}{'score':>8}")
    for name, s in summary.items():
        print(f"{name:<24}" + "".join(f"{s['geomean_vs_best_adam'][str(t)]:>10.3g}" for t in report) + "  "
              + "".join(f"{s['geomean_vs_tuned_adam'][str(t)]:>10.3g}" for t in report)
              + f"{s['divergences']:>7}/{runs}" + (f"{s['score']:>8.3f}" if "score" in s else ""))
    print(f"{len(rows)} validation problems, {time.perf_counter() - began:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"command": "python -m bench.longrun " + " ".join(
            sys.argv[1:] if argv is None else argv), "summary": summary, "problems": rows}, indent=1) + "\n")
    return 0


def run_problems(args: argparse.Namespace, report: list[int]) -> list[dict]:
    torch.set_num_threads(1)
    learned = {}
    for item in args.optimizer:
        name, _, folder = item.partition("=")
        learned[name] = Checkpoint.load(folder)
    family = MixtureFamily(max_coords=50_000, clean=args.clean)
    points = sorted(set(record_points(args.steps)) | set(report))
    reused = {r["problem"]: r for path in args.reuse for r in json.loads(path.read_text())["problems"]}
    rows = []
    for k in args.only if args.only is not None else range(args.problems):
        batch = family.sample(args.instances, SEED_BASE + k, "validation")
        row = reused.get(k)
        if row is not None and row["spec"] != problem_spec(batch):
            row = None   # another draw under the same number (--clean): run its baselines afresh
        if row is None:
            row = adam_row(family, k, batch, args.instances, report, points)
        elif row["runs"] != args.instances or list(row["loss"]["adam-tuned"]) != [str(t) for t in report]:
            raise SystemExit(f"--reuse: problem {k} was run with other instances or steps")
        else:
            row = copy.deepcopy(row)
        curves = {}
        for name, ckpt in learned.items():
            if name not in row["loss"]:
                curves[name] = run(batch, learned_optimizer(ckpt), points)
        add_curves(row, curves, torch.tensor(row["initial"]), report, points)
        rows.append(row)
        print(f"problem {k} {row['spec']['kind']}: " + ", ".join(
            f"{n} {row['loss'][n][str(args.steps)]:.3g}{'!' * row['diverged'][n]}" for n in row["loss"]),
            file=sys.stderr, flush=True)
    return rows


def adam_row(family: MixtureFamily, k: int, batch, instances: int, report: list[int], points: list[int]) -> dict:
    """Problem k's row with Adam at 1e-3 and 3e-3, and Adam tuned on other instances of the problem."""
    # One run per learning rate: the mixture's quadratics are not FunctionalBatches, so no Tiled.
    by_lr = {lr: run(batch, torch_optimizer("adam", [lr]), points) for lr in ADAM_LRS}
    tuned = tune_adam(family, k, instances, report, points)
    by_lr.update({lr: run(batch, torch_optimizer("adam", [lr]), points) for lr in set(tuned.values()) - set(by_lr)})
    curves = {f"adam-{lr:g}": by_lr[lr] for lr in ADAM_LRS}
    # Tuned Adam's loss at step t is that of its run with the learning rate tuned for t.
    curves["adam-tuned"] = by_lr[tuned[report[-1]]].clone()
    for t in report:
        curves["adam-tuned"][points.index(t)] = by_lr[tuned[t]][points.index(t)]
    initial = curves["adam-0.001"][0]
    row = {"problem": k, "spec": problem_spec(batch),
           "runs": instances, "initial": initial.tolist(), "tuned_lr": {str(t): lr for t, lr in tuned.items()},
           "loss": {}, "diverged": {}}
    add_curves(row, curves, initial, report, points)
    return row


def problem_spec(batch) -> dict:
    return {a: b for a, b in batch.description.items() if a != "data_seed"}


def add_curves(row: dict, curves: dict[str, torch.Tensor], initial: torch.Tensor, report: list[int],
               points: list[int]) -> None:
    for name, c in curves.items():
        row["loss"][name] = {str(t): float(c[points.index(t)].mean()) for t in report}
        row["diverged"][name] = diverged_runs(c, initial)


def tune_adam(family: MixtureFamily, k: int, instances: int, report: list[int], points: list[int]) -> dict[int, float]:
    """Adam's best learning rate on bench.generalization's grid for each reported step, by mean loss on
    other instances of validation problem k."""
    batch = family.sample(instances, SEED_BASE + k, "validation", instance_seed=TUNE_INSTANCE_SEED + k)
    return best_lr_per_step({lr: run(batch, torch_optimizer("adam", [lr]), points) for lr in ADAM_GRID}, points, report)


def geomean(rows: list[dict], name: str, report: list[int], baseline) -> dict[str, float]:
    """Per reported step, the geometric mean over problems of `name`'s loss ÷ baseline(row, step)."""
    geo = {}
    for t in report:
        logs = []
        for r in rows:
            v = r["loss"][name][str(t)]
            logs.append(math.log(max(v, 1e-30) / max(baseline(r, t), 1e-30)) if math.isfinite(v) else math.inf)
        geo[str(t)] = math.exp(sum(logs) / len(logs)) if all(map(math.isfinite, logs)) else math.inf
    return geo


if __name__ == "__main__":
    raise SystemExit(main())
