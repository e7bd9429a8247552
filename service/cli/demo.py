"""`l2o demo`: meta-train a small optimizer on quadratics and print its table against tuned baselines."""

from __future__ import annotations

import argparse
from pathlib import Path

from service.cli.progress import ProgressBar
from service.lopt import OptimizerConfig
from service.metatrain import MetaTrainSettings, evaluate, meta_train
from service.tasks import make_family


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="train a small learned optimizer and compare it with tuned baselines",
                       description=__doc__)
    p.add_argument("--iterations", type=int, default=60)
    p.add_argument("--out", type=Path, default=Path("out/demo-quadratic"))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    family = make_family("quadratic")
    settings = MetaTrainSettings(iterations=args.iterations, instances=64, meta_lr=3e-3, eval_every=10)
    config = OptimizerConfig(trained_on={"family": "quadratic", "params": family.params(),
                                         "settings": settings.to_dict()})
    print(f"meta-training a coordinatewise LSTM on 10-d quadratics ({settings.iterations} iterations)...")
    bar = ProgressBar(settings.iterations)
    result = meta_train(family, config, settings,
                        progress=lambda p: bar.update(p.iteration, elapsed=p.seconds,
                                                      extra=f"meta-loss {p.meta_loss:.3g}"))
    bar.close()
    result.checkpoint.save(args.out)
    print(f"saved the optimizer to {args.out}")
    report = evaluate(result.checkpoint, family, n_instances=64, steps=100, seed=1)
    print("\nloss at step 100 on 64 held-out quadratics (baselines' learning rates tuned on training instances):")
    print(report.table())
    return 0
