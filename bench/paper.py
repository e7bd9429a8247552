"""The paper's table as a benchmark: `python -m bench.paper [--quick] [--json PATH] [--plot PATH]`.

Meta-trains (or, with --load, loads the shipped) optimizers, evaluates each row of
the paper's table on held-out instances against SGD, NAG, RMSprop and Adam with
learning rates tuned on training instances, prints one table, writes it as JSON
and the loss curves as a PNG. Every row also runs the shipped general optimizer (general-mlp, trained on
the mixture, never on these families) against the same tuned baselines. Reports the meta-training runs'
throughput; `bench.metatrain` compares it with the straightforward implementation like for like.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from service.lopt import Checkpoint, OptimizerConfig
from service.metatrain import EvaluationReport, MetaTrainSettings, evaluate, meta_train, tune_all
from service.tasks import make_family

PRETRAINED = Path(__file__).resolve().parent.parent / "service" / "pretrained"

# The paper's figures, read off its log-scale plots (about ±20%), loss at the last step.
PAPER = {
    "quadratic": {"lstm": 0.040, "adam": 0.052, "rmsprop": 0.061, "nag": 0.082, "sgd": 0.22},
    "digits_mlp": {"lstm": 0.25, "adam": 0.37, "rmsprop": 0.36, "nag": 0.33, "sgd": 0.46},
    "digits_mlp_200_steps": {"lstm": 0.21, "adam": 0.30, "rmsprop": 0.29, "nag": 0.26, "sgd": 0.33},
    "digits_mlp_40_units": {"lstm": 0.19, "adam": 0.34, "rmsprop": 0.32, "nag": 0.30, "sgd": 0.45},
    "digits_mlp_2_layers": {"lstm": 0.32, "adam": 0.70, "rmsprop": 0.72, "nag": 0.75, "sgd": 1.8},
    "digits_mlp_relu": {"lstm": 2.4, "adam": 0.36, "rmsprop": 0.40, "nag": 0.37, "sgd": 0.45},
}
TARGETS = {"quadratic": 0.5, "digits_mlp": 0.8, "digits_mlp_200_steps": 1.0, "digits_mlp_40_units": 1.0,
           "digits_mlp_2_layers": 1.0, "digits_mlp_relu": None}


@dataclass(frozen=True)
class Row:
    name: str
    optimizer: str  # which trained optimizer the row uses: "quadratic" or "mlp"
    family: str
    params: dict[str, Any]
    steps: int


ROWS = [
    Row("quadratic", "quadratic", "quadratic", {}, 100),
    Row("digits_mlp", "mlp", "mlp", {}, 100),
    Row("digits_mlp_200_steps", "mlp", "mlp", {}, 200),
    Row("digits_mlp_40_units", "mlp", "mlp", {"hidden_sizes": [40]}, 100),
    Row("digits_mlp_2_layers", "mlp", "mlp", {"hidden_sizes": [20, 20]}, 100),
    Row("digits_mlp_relu", "mlp", "mlp", {"activation": "relu"}, 100),
]

# Meta-training recipes: the same ones the shipped checkpoints were made with (see their config's command).
RECIPES = {
    "quadratic": ("quadratic", {}, MetaTrainSettings(iterations=600, instances=128, meta_lr=3e-3,
                                                     meta_lr_schedule="cosine", eval_every=25, eval_instances=64)),
    "mlp": ("mlp", {}, MetaTrainSettings(iterations=80, instances=16, meta_lr=3e-3, eval_every=10,
                                         eval_instances=8)),
}
# --quick evaluates the shipped checkpoints and times a few meta-iterations of each recipe.
QUICK_SETTINGS = {
    "quadratic": MetaTrainSettings(iterations=5, instances=128, meta_lr=3e-3, eval_every=5),
    "mlp": MetaTrainSettings(iterations=2, instances=16, meta_lr=3e-3, eval_every=2, eval_instances=4),
}
SHIPPED = {"quadratic": "quadratic-lstm", "mlp": "digits-mlp-lstm"}
GENERAL = "general-mlp"  # the shipped general optimizer, run on every row beside the row's own
TIMING_REPEATS = 3  # short throughput timings (a shipped optimizer's few iterations) per run


def train(kind: str, seed: int, quick: bool) -> tuple[Checkpoint, dict[str, float]]:
    family_name, params, settings = RECIPES[kind]
    if quick:
        settings = QUICK_SETTINGS[kind]
    settings = MetaTrainSettings(**{**settings.to_dict(), "seed": seed})
    family = make_family(family_name, **params)
    config = OptimizerConfig(trained_on={"family": family_name, "params": family.params(),
                                         "settings": settings.to_dict()})
    result = meta_train(family, config, settings)
    return result.checkpoint, {"seconds": result.seconds, "optimizee_steps_per_s": result.optimizee_steps_per_s}


def run(args: argparse.Namespace) -> dict[str, Any]:
    quick = args.quick
    n_eval = 16 if quick else 64
    seeds = [0] if quick else [0, 1, 2]
    optimizers: dict[str, list[Checkpoint]] = {}
    meta: dict[str, Any] = {}
    to_train = set() if quick or args.load else set(args.train.split(","))
    for kind in ("quadratic", "mlp"):
        optimizers[kind], runs = [], []
        if kind not in to_train:
            # Evaluate the shipped checkpoint (made by the same recipe) and time a few iterations of the recipe.
            optimizers[kind] = [Checkpoint.load(PRETRAINED / SHIPPED[kind])]
            print(f"timing a few meta-training iterations of {kind} ...", flush=True)
            # An untimed first run keeps one-off costs (imports, loading the digits, the first eval's kernel
            # load) out of a figure measured over a few seconds.
            train(kind, 0, quick=True)
            runs.extend(train(kind, 0, quick=True)[1] for _ in range(1 if quick else TIMING_REPEATS))
        for seed in seeds if kind in to_train else []:
            print(f"meta-training {kind} (seed {seed}) ...", flush=True)
            ckpt, stats = train(kind, seed, quick=False)
            optimizers[kind].append(ckpt)
            runs.append(stats)
        # Medians of repeated short timings: one run of a few seconds moves with whatever else the machine does.
        meta[kind] = {"trained": kind in to_train, "seconds": statistics.median(r["seconds"] for r in runs),
                      "optimizee_steps_per_s": statistics.median(r["optimizee_steps_per_s"] for r in runs),
                      "seeds": runs}
    general = Checkpoint.load(PRETRAINED / GENERAL)

    rows, reports = [], {}
    tuned_cache: dict[str, Any] = {}
    for row in ROWS:
        family = make_family(row.family, **row.params)
        key = json.dumps([row.family, row.params, row.steps], sort_keys=True)
        if key not in tuned_cache:  # --quick tunes on the same grid, on fewer instances
            tuned_cache[key] = tune_all(family, steps=row.steps, n_instances=8 if quick else 16, seed=0)
        per_seed: list[EvaluationReport] = [
            evaluate(ckpt, family, n_instances=n_eval, steps=row.steps, seed=1, tuned=tuned_cache[key])
            for ckpt in optimizers[row.optimizer]]
        ratios = [r.ratio for r in per_seed]
        median_i = sorted(range(len(ratios)), key=ratios.__getitem__)[len(ratios) // 2]
        report = per_seed[median_i]
        reports[row.name] = report
        half = evaluate(optimizers[row.optimizer][median_i], family, n_instances=n_eval, steps=row.steps, seed=1,
                        tuned=tuned_cache[key], baselines=(), state_dtype=torch.bfloat16).final["lstm"]
        final = report.final
        general_loss = evaluate(general, family, n_instances=n_eval, steps=row.steps, seed=1,
                                tuned=tuned_cache[key], baselines=()).final["lstm"]
        rows.append({
            "row": row.name, "steps": row.steps, "lstm": final["lstm"],
            "baselines": {k: v for k, v in final.items() if k != "lstm"},
            "learning_rates": report.learning_rates,
            "best_baseline": report.best_baseline, "ratio": report.ratio, "seed_ratios": ratios,
            "target_ratio": TARGETS[row.name], "lstm_bf16_state": half, "paper": PAPER[row.name],
            "general": general_loss, "general_ratio": general_loss / final[report.best_baseline],
        })
    return {"quick": quick, "trained": sorted(to_train), "rows": rows, "meta_training": meta,
            "_reports": reports}


def print_table(result: dict[str, Any]) -> None:
    head = (f"{'row':<22} {'LSTM':>8} {'(bf16)':>8} {'SGD':>8} {'NAG':>8} {'RMSprop':>8} {'ADAM':>8} "
            f"{'ratio':>6} {'target':>6} {GENERAL:>12} {'ratio':>6} | paper: {'LSTM':>6} {'ADAM':>6}")
    print(head)
    print("-" * len(head))
    for r in result["rows"]:
        b = r["baselines"]
        target = f"≤{r['target_ratio']:.2g}" if r["target_ratio"] else "-"
        print(f"{r['row']:<22} {r['lstm']:>8.4g} {r['lstm_bf16_state']:>8.4g} {b['sgd']:>8.4g} {b['nag']:>8.4g} "
              f"{b['rmsprop']:>8.4g} {b['adam']:>8.4g} {r['ratio']:>6.3f} {target:>6} {r['general']:>12.4g} "
              f"{r['general_ratio']:>6.3f} | "
              f"       {r['paper']['lstm']:>6.3g} {r['paper']['adam']:>6.3g}")
        if len(r["seed_ratios"]) > 1:
            print(f"{'':<22} per-seed ratios: {', '.join(f'{x:.3f}' for x in r['seed_ratios'])} (median shown)")
    for kind, m in result["meta_training"].items():
        what = "meta-training" if m["trained"] else "meta-training (a few timed iterations; shipped checkpoint used)"
        print(f"{what} {kind}: {m['seconds']:.0f} s, {m['optimizee_steps_per_s']:,.0f} optimizee steps/s "
              "(with validation; `python -m bench.metatrain` compares the loop with the straightforward one)")


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reports = result["_reports"]
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    for ax, (name, report) in zip(axes.flat, reports.items(), strict=False):
        for opt, curve in report.curves.items():
            ax.plot(curve.mean, label=opt, linewidth=2.2 if opt == "lstm" else 1.2)
        ax.set_yscale("log")
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.set_ylabel("loss (held-out instances)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def default_outputs(load: bool) -> tuple[Path, Path]:
    """Where a run writes its JSON and plot unless told: a --load run (shipped checkpoints only) never
    overwrites the full run's files, which the README's table quotes."""
    stem = Path("bench/results") / ("paper-load" if load else "paper")
    return stem.with_suffix(".json"), stem.with_suffix(".png")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="evaluate the shipped checkpoints on fewer instances (the same tuning grid), time a "
                             "short run")
    parser.add_argument("--load", action="store_true", help="evaluate the shipped pretrained optimizers only")
    parser.add_argument("--train", default="quadratic,mlp",
                        help="which optimizers to meta-train (three seeds each, the median shown); the others are "
                             "loaded")
    parser.add_argument("--json", type=Path, help="default: bench/results/paper.json (paper-load.json with --load)")
    parser.add_argument("--plot", type=Path, help="default: bench/results/paper.png (paper-load.png with --load)")
    args = parser.parse_args(argv)
    json_path, plot_path = default_outputs(args.load)
    args.json, args.plot = args.json or json_path, args.plot or plot_path
    began = time.perf_counter()
    result = run(args)
    result["seconds"] = time.perf_counter() - began
    print_table(result)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({k: v for k, v in result.items() if not k.startswith("_")}, indent=2) + "\n")
    args.plot.parent.mkdir(parents=True, exist_ok=True)
    plot(result, args.plot)
    print(f"wrote {args.json} and {args.plot} ({result['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
