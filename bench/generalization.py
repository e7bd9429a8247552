"""Do the shipped optimizers help on problems they never saw? The held-out suite (bench/heldout.py).

    python -m bench.generalization [--quick] [--json PATH] [--plot PATH] [--optimizer NAME=DIR ...]

In one run, with the same initialisations and minibatches for all, on every held-out problem: every
shipped learned optimizer (service/pretrained, plus any --optimizer), Adam at lr 1e-3, and Adam and SGD
with momentum 0.9 with their learning rate tuned per problem and per reported step on a grid, on seeds
that are not scored. Reported: the loss on the problem's whole training set at steps 100, 1,000 and 5,000
(mean over 5 seeds), the geometric mean over problems of (loss ÷ tuned Adam's loss) per optimizer and
step, divergences (a non-finite loss, or one above the initial loss, at any recorded step), a plot of the
curves, and one JSON row per problem. `--quick` (CI) stops at steps 30 and 100 on 2 seeds, on the same grid.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from bench.heldout import PROBLEMS, Problem
from service.lopt import Checkpoint, init, step
from service.tasks.functional import FunctionalBatch, Tiled

PRETRAINED = Path(__file__).resolve().parent.parent / "service" / "pretrained"
ADAM_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
SGD_GRID = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)
TUNE_SEED, SCORE_SEED = 1_000, 0

Advance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def record_points(last: int) -> list[int]:
    """Log-spaced steps for the curves, the reported ones included."""
    points = {0, last}
    t = 1.0
    while t < last:
        points.add(int(t))
        t *= 1.25
    return sorted(points)


def run(batch: FunctionalBatch, make_advance: Callable[[torch.Tensor], Advance], points: list[int]) -> torch.Tensor:
    """Losses on the whole training set, (len(points), instances), under one optimizer."""
    theta = batch.init_params()
    advance = make_advance(theta)
    out = []
    for t in range(points[-1] + 1):
        if t in points:
            with torch.no_grad():
                out.append(torch.nan_to_num(batch.eval_loss(theta), nan=math.inf, posinf=math.inf))
            if not torch.isfinite(out[-1]).all():
                out.extend([torch.full_like(out[-1], math.inf)] * (len(points) - len(out)))
                break
        if t == points[-1]:
            break
        theta = theta.detach().requires_grad_()
        (grad,) = torch.autograd.grad(batch.loss(theta, t).sum(), theta)
        with torch.no_grad():
            theta = advance(theta.detach(), grad)
    return torch.stack(out)


def torch_optimizer(kind: str, lrs: list[float]):
    """torch.optim's Adam or SGD with momentum 0.9, row r of θ with learning rate lrs[r % len(lrs)]: each
    row is its own parameter in its own group, so one run covers a whole grid."""
    def make(theta0: torch.Tensor) -> Advance:
        rows = [theta0[r].clone().requires_grad_() for r in range(theta0.shape[0])]
        groups = [{"params": [p], "lr": lrs[r % len(lrs)]} for r, p in enumerate(rows)]
        opt = torch.optim.Adam(groups) if kind == "adam" else torch.optim.SGD(groups, momentum=0.9)

        def advance(theta: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
            for r, p in enumerate(rows):
                p.grad = grad[r]
            opt.step()
            return torch.stack([p.detach() for p in rows])
        return advance
    return make


def learned_optimizer(ckpt: Checkpoint):
    weights = {k: v.detach() for k, v in ckpt.weights.items()}

    def make(theta0: torch.Tensor) -> Advance:
        b, d = theta0.shape
        state = init(ckpt.config, b * d)

        def advance(theta: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
            nonlocal state
            updates, state = step(ckpt.config, weights, grad.reshape(-1), state)
            return theta + updates.view(b, d)
        return advance
    return make


def grid_run(problem_batch: FunctionalBatch, kind: str, lrs: list[float],
             points: list[int]) -> dict[float, torch.Tensor]:
    """Losses (len(points), instances) for each learning rate, all run side by side on the same instances."""
    losses = run(Tiled(problem_batch, len(lrs)), torch_optimizer(kind, lrs), points)
    return {lr: losses[:, i::len(lrs)] for i, lr in enumerate(lrs)}


def tune(problem: Problem, kind: str, grid: tuple[float, ...], report: list[int], tune_seeds: int) -> dict[int, float]:
    """The grid's best learning rate for each reported step, by mean loss on the tuning seeds."""
    return best_lr_per_step(grid_run(problem.batch(tune_seeds, TUNE_SEED), kind, list(grid), report), report, report)


def best_lr_per_step(losses: dict[float, torch.Tensor], points: list[int], report: list[int]) -> dict[int, float]:
    """For each reported step, the learning rate whose runs ((len(points), runs) losses) have the lowest
    finite mean loss there (the smallest one when none is finite)."""
    best = {}
    for t in report:
        scores = {lr: float(c[points.index(t)].mean()) for lr, c in losses.items()}
        finite = {lr: v for lr, v in scores.items() if math.isfinite(v)}
        best[t] = min(finite, key=finite.get) if finite else min(losses)
    return best


def evaluate_problem(problem: Problem, learned: dict[str, Checkpoint], report: list[int], seeds: int,
                     tune_seeds: int, reused: dict | None = None) -> dict:
    """One problem's row. `reused`, this problem's row from an earlier run with the same steps and seeds,
    supplies the curves of every optimizer it has, so only the others run (same instances, same data)."""
    points = sorted(set(record_points(report[-1])) | set(report))
    batch = problem.batch(seeds, SCORE_SEED)
    curves: dict[str, torch.Tensor] = {}
    if reused is not None:
        curves = {name: torch.tensor(c) for name, c in reused["raw"].items()}
    for name, ckpt in learned.items():
        if name not in curves:
            curves[name] = run(batch, learned_optimizer(ckpt), points)
    tuned_lrs = dict(reused["tuned_lr"]) if reused is not None else {}
    for label, kind, grid in (("adam-tuned", "adam", ADAM_GRID), ("sgdm-tuned", "sgd", SGD_GRID)):
        if label in curves:
            continue
        best = tune(problem, kind, grid, report, tune_seeds)
        tuned_lrs[label] = {str(t): lr for t, lr in best.items()}
        lrs = sorted(set(best.values()) | ({1e-3} if kind == "adam" else set()))
        by_lr = grid_run(batch, kind, lrs, points)
        if kind == "adam":
            curves["adam-1e-3"] = by_lr[1e-3]
        # The tuned optimizer's loss at step t is that of the run with the learning rate tuned for t.
        curve = by_lr[best[report[-1]]].clone()
        for t in report:
            curve[points.index(t)] = by_lr[best[t]][points.index(t)]
        curves[label] = curve
    initial = curves["adam-1e-3"][0]
    row = {"problem": problem.name, "description": problem.description, "dim": batch.dim, "seeds": seeds,
           "tuned_lr": tuned_lrs, "steps": points, "loss": {}, "curve": {}, "divergences": {},
           "raw": {name: c.tolist() for name, c in curves.items()}}
    for name, c in curves.items():
        row["loss"][name] = {str(t): float(c[points.index(t)].mean()) for t in report}
        row["curve"][name] = [float(v) for v in c.mean(dim=1)]
        row["divergences"][name] = diverged_runs(c, initial)
    return row


def diverged_runs(curve: torch.Tensor, initial: torch.Tensor) -> int:
    """Runs (columns of a (points, runs) curve) whose loss was non-finite or above its initial loss at any
    recorded point."""
    return int((~torch.isfinite(curve) | (curve > initial.unsqueeze(0) * (1 + 1e-6))).any(dim=0).sum())


def summarize(rows: list[dict], report: list[int]) -> dict:
    names = list(rows[0]["loss"])
    summary = {"geomean_vs_tuned_adam": {}, "divergences": {}, "ahead_of_adam_1e-3": {}}
    for name in names:
        summary["geomean_vs_tuned_adam"][name] = {}
        for t in report:
            logs = [math.log(max(r["loss"][name][str(t)], 1e-30) / max(r["loss"]["adam-tuned"][str(t)], 1e-30))
                    for r in rows]
            summary["geomean_vs_tuned_adam"][name][str(t)] = math.exp(sum(logs) / len(logs))
        summary["divergences"][name] = sum(r["divergences"][name] for r in rows)
        t = str(report[min(1, len(report) - 1)])
        summary["ahead_of_adam_1e-3"][name] = sum(r["loss"][name][t] < r["loss"]["adam-1e-3"][t] for r in rows)
    return summary


def table(rows: list[dict], summary: dict, report: list[int]) -> str:
    names = list(rows[0]["loss"])
    lines = []
    for r in rows:
        lines.append(f"\n{r['problem']} ({r['description']}, {r['dim']} parameters)")
        lines.append(f"  {'optimizer':<22}" + "".join(f"{'step ' + str(t):>14}" for t in report) + f"{'diverged':>10}")
        for name in names:
            cells = "".join(f"{r['loss'][name][str(t)]:>14.4g}" for t in report)
            lines.append(f"  {name:<22}{cells}{r['divergences'][name]:>10}")
    lines.append("\ngeometric mean of loss / tuned Adam's loss over problems")
    lines.append(f"  {'optimizer':<22}" + "".join(f"{'step ' + str(t):>14}" for t in report)
                 + f"{'diverged':>10}{'< adam 1e-3':>13}")
    for name in names:
        g = summary["geomean_vs_tuned_adam"][name]
        lines.append(f"  {name:<22}" + "".join(f"{g[str(t)]:>14.3f}" for t in report)
                     + f"{summary['divergences'][name]:>10}{summary['ahead_of_adam_1e-3'][name]:>9}/{len(rows)}")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 4
    fig, axes = plt.subplots(math.ceil(len(rows) / cols), cols, figsize=(4 * cols, 3.2 * math.ceil(len(rows) / cols)))
    for ax, r in zip(axes.flat, rows, strict=False):
        for name, curve in r["curve"].items():
            ax.plot([max(s, 1) for s in r["steps"]], curve, label=name)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(r["problem"], fontsize=9)
        ax.set_xlabel("step")
    axes.flat[0].legend(fontsize=6)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)


def dashboard_report(doc: dict, learned: str) -> dict:
    """The run as one version's evaluation, in the shape the dashboard draws (EvaluationReport.to_dict()):
    per optimizer, the geometric mean over problems of loss ÷ the problem's initial loss at each recorded
    step. Every optimizer starts each problem from the same θ_0, so the ratio of two of these means is
    the geometric mean of their per-problem loss ratios."""
    rows = doc["problems"]
    steps_at = rows[0]["steps"]
    names = [learned] + [n for n in rows[0]["curve"] if n in ("adam-1e-3", "adam-tuned", "sgdm-tuned")]
    curves = {}
    for name in names:
        mean = []
        for i in range(len(steps_at)):
            logs = [math.log(max(r["curve"][name][i], 1e-30) / max(r["curve"][name][0], 1e-30)) for r in rows]
            mean.append(math.exp(sum(logs) / len(logs)))
        curves[name] = {"mean": mean, "std": [0.0] * len(mean)}
    final = {name: c["mean"][-1] for name, c in curves.items()}
    baselines = {k: v for k, v in final.items() if k != learned}
    best = min(baselines, key=baselines.get)
    return {"family": "held-out suite (python -m bench.generalization)",
            "family_params": {"problems": [r["problem"] for r in rows]}, "steps": steps_at[-1],
            "n_instances": doc["seeds"], "seed": SCORE_SEED, "learned": learned, "steps_at": steps_at,
            "curves": curves, "final": final, "learning_rates": {}, "best_baseline": best,
            "ratio": final[learned] / baselines[best], "summary": doc["summary"], "command": doc["command"]}


def shipped() -> dict[str, Checkpoint]:
    return {d.name: Checkpoint.load(d) for d in sorted(PRETRAINED.iterdir()) if (d / "weights.safetensors").exists()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="steps 30 and 100 on 2 seeds (CI)")
    parser.add_argument("--json", type=Path, help="write the rows and the summary here")
    parser.add_argument("--plot", type=Path, help="write the curves here (PNG)")
    parser.add_argument("--optimizer", action="append", default=[], metavar="NAME=DIR",
                        help="a checkpoint folder to run beside the shipped ones")
    parser.add_argument("--only", action="append", default=[], metavar="NAME", help="run only these problems")
    parser.add_argument("--no-shipped", action="store_true", help="leave out the shipped optimizers")
    parser.add_argument("--evaluation", metavar="NAME=PATH",
                        help="also write optimizer NAME's report, in the registry's evaluation shape, to PATH")
    parser.add_argument("--reuse", type=Path, metavar="JSON", action="append", default=[],
                        help="an earlier run's JSON (same --quick or not): its optimizers are not run again "
                             "(repeatable: runs over different problems, or of different optimizers, combine)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads; these problems are small enough that more threads only add waiting")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    report, seeds, tune_seeds = ([30, 100], 2, 2) if args.quick else ([100, 1000, 5000], 5, 2)
    learned = {} if args.no_shipped else shipped()
    for item in args.optimizer:
        name, sep, folder = item.partition("=")
        if not sep:
            parser.error(f"--optimizer takes NAME=DIR, got {item!r}")
        learned[name] = Checkpoint.load(folder)
    problems = [p for p in PROBLEMS if not args.only or p.name in args.only]
    unknown = sorted(set(args.only) - {p.name for p in PROBLEMS})
    if unknown:
        parser.error(f"unknown problems {unknown}; known: {[p.name for p in PROBLEMS]}")
    reused = {}
    for path in args.reuse:
        earlier = json.loads(path.read_text())
        if (earlier["report_steps"], earlier["seeds"]) != (report, seeds):
            parser.error(f"{path} has steps {earlier['report_steps']} on {earlier['seeds']} seeds, not {report}")
        for r in earlier["problems"]:
            if r["problem"] in reused:   # the same problem in another run: its optimizers join those already read
                reused[r["problem"]] = {**reused[r["problem"]], "raw": {**reused[r["problem"]]["raw"], **r["raw"]}}
            else:
                reused[r["problem"]] = r
    began = time.perf_counter()
    rows = []
    for problem in problems:
        t0 = time.perf_counter()
        rows.append(evaluate_problem(problem, learned, report, seeds, tune_seeds, reused.get(problem.name)))
        print(f"{problem.name}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    summary = summarize(rows, report)
    print(table(rows, summary, report))
    print(f"\n{len(problems)} problems, {seeds} seeds, {time.perf_counter() - began:.0f} s")
    doc = {"command": "python -m bench.generalization " + " ".join(sys.argv[1:] if argv is None else argv),
           "report_steps": report, "seeds": seeds, "tune_seeds": tune_seeds, "adam_grid": ADAM_GRID,
           "sgd_grid": SGD_GRID, "optimizers": {n: c.config.to_dict() for n, c in learned.items()},
           "summary": summary, "problems": rows}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=1) + "\n")
    if args.plot:
        plot(rows, args.plot)
    if args.evaluation:
        name, _, path = args.evaluation.partition("=")
        Path(path).write_text(json.dumps(dashboard_report(doc, name)) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
