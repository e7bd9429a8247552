"""`l2o train`: meta-train an optimizer on a task family and save its checkpoint."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
from pathlib import Path

from service.cli.options import add_family_options, parse_params
from service.cli.progress import ProgressBar
from service.lopt import OptimizerConfig
from service.lopt.config import ARCHITECTURES
from service.metatrain import MetaTrainSettings, ResumeCheckpoint, evaluate, meta_train
from service.metatrain.settings import META_LOSSES, META_LR_SCHEDULES
from service.tasks import make_family


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="meta-train a learned optimizer", description=__doc__)
    add_family_options(p)
    defaults = MetaTrainSettings()
    choices = {"meta_lr_schedule": META_LR_SCHEDULES}
    choices["meta_loss"] = META_LOSSES
    types = {"max_horizon": int}
    for f in dataclasses.fields(MetaTrainSettings):
        p.add_argument(f"--{f.name.replace('_', '-')}", type=types.get(f.name) or type(getattr(defaults, f.name)),
                       default=getattr(defaults, f.name), choices=choices.get(f.name))
    p.add_argument("--architecture", choices=ARCHITECTURES, default="lstm")
    p.add_argument("--hidden-size", type=int, default=None, help="default: 20 (lstm), 32 (feature_mlp)")
    p.add_argument("--num-layers", type=int, default=2)
    p.add_argument("--preprocess", choices=["log_sign", "none"], default=None, help="lstm only (default log_sign)")
    p.add_argument("--output-scale", type=float, default=None, help="default: 0.1 (lstm), 0.003 (feature_mlp)")
    p.add_argument("--resume", action="store_true",
                   help="go on from OUT/resume.pt, written every --resume-every iterations")
    p.add_argument("--eval-steps", type=int, default=None, help="evaluation horizon (default: the horizon)")
    p.add_argument("--eval-heldout", type=int, default=64, help="held-out instances in the final evaluation")
    p.add_argument("--no-eval", action="store_true", help="skip the final evaluation against the baselines")
    p.add_argument("--out", required=True, type=Path, help="folder to write the checkpoint to")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    family_params = parse_params(args.param)
    family = make_family(args.family, **family_params)
    settings = MetaTrainSettings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(MetaTrainSettings)})
    command = "l2o " + shlex.join(sys.argv[1:]) if sys.argv and sys.argv[0].endswith("l2o") else None
    mlp = args.architecture == "feature_mlp"
    lstm_only = {"preprocess": args.preprocess} if args.preprocess is not None else {}
    config = OptimizerConfig(
        architecture=args.architecture, hidden_size=args.hidden_size or (32 if mlp else 20),
        num_layers=args.num_layers, output_scale=args.output_scale or (0.003 if mlp else 0.1), **lstm_only,
        trained_on={"family": family.name, "params": family.params(), "settings": settings.to_dict()},
        command=command)
    resume_path = args.out / "resume.pt"
    resume = None
    if args.resume and resume_path.exists():
        resume = ResumeCheckpoint.from_bytes(resume_path.read_bytes())
        print(f"resuming from {resume_path} at iteration {resume.iteration}")

    def save_resume(ckpt: ResumeCheckpoint) -> None:
        args.out.mkdir(parents=True, exist_ok=True)
        tmp = resume_path.with_suffix(".tmp")
        tmp.write_bytes(ckpt.to_bytes())
        tmp.replace(resume_path)  # atomic: a crash mid-write leaves the previous checkpoint
    bar = ProgressBar(settings.iterations)
    last_eval: list[float | None] = [None]

    def on_progress(p) -> None:
        if p.eval_loss is not None:
            last_eval[0] = p.eval_loss
        ev = f"{last_eval[0]:.4g}" if last_eval[0] is not None else "-"
        bar.update(p.iteration, elapsed=p.seconds, extra=f"meta-loss {p.meta_loss:.4g} eval {ev}")

    result = meta_train(family, config, settings, progress=on_progress, resume=resume,
                        on_resume_checkpoint=save_resume)
    bar.close()
    result.checkpoint.save(args.out)
    print(f"saved {args.out} (sha256 {result.checkpoint.digest[:16]}…, best validation loss {result.best_eval:.4g}, "
          f"{result.seconds:.0f} s, {result.optimizee_steps_per_s:,.0f} optimizee steps/s)")
    if not args.no_eval:
        report = evaluate(result.checkpoint, family, n_instances=args.eval_heldout,
                          steps=args.eval_steps or settings.horizon, seed=settings.seed + 1, device=settings.device)
        (args.out / "evaluation.json").write_text(json.dumps(report.to_dict()) + "\n")
        print(report.table())
    return 0
