"""`l2o train`: meta-train an optimizer on a task family and save its checkpoint.

    l2o train --family quadratic --param dim=10 --iterations 100 --out quad
    l2o train --out quad --resume    continue an interrupted run where it stopped

Every --resume-every iterations, and when interrupted (Ctrl-C), the run writes OUT/resume.pt (weights,
meta-optimizer and RNG state) beside OUT/resume.json (the options it was started with); `l2o train
--out OUT --resume` continues from there, with those options (any given again must match), and saves the
checkpoint an uninterrupted run would have. Both files are removed once the checkpoint is saved.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from service.cli.errors import CliError, ExitCode
from service.cli.options import add_family_options, parse_params
from service.cli.progress import ProgressBar
from service.lopt import OptimizerConfig
from service.lopt.config import ARCHITECTURES, FEATURE_MLP_SWITCHES
from service.metatrain import MetaTrainSettings, ResumeCheckpoint, evaluate, meta_train
from service.metatrain.settings import META_LOSSES, META_LR_SCHEDULES
from service.tasks import make_family

RESUME_FILE = "resume.pt"
RUN_FILE = "resume.json"

SETTING_HELP = {
    "iterations": "meta-training iterations, each one trajectory of --horizon steps per instance",
    "horizon": "optimizee steps per trajectory",
    "unroll": "optimizee steps per truncated-BPTT unroll (must divide --horizon)",
    "meta_lr": "learning rate of the meta-optimizer (Adam)",
    "meta_lr_schedule": "constant, or cosine from --meta-lr down to 0 over the iterations",
    "instances": "optimizee instances trained on at once",
    "seed": "seed of the whole run: the same seed and options give the same checkpoint",
    "grad_clip": "clip the meta-gradient's norm to this",
    "eval_every": "validate every N iterations; the best validation loss picks the saved weights",
    "eval_instances": "validation instances",
    "resume_every": f"write a resume checkpoint (OUT/{RESUME_FILE}) every N iterations",
    "device": "torch device to meta-train on (cpu, cuda, ...)",
    "meta_loss": ("sum (the paper's sum of losses), log (mean log loss: every problem of a mixture counts alike) or "
                  "log_rise (log, and a penalty on a loss above the run's initial one)"),
    "max_horizon": "draw each iteration's horizon log-uniformly from --horizon to this (default: always --horizon)",
    "eval_problems": "validation problems (a mixture draws several)",
    "eval_seed": "draw the validation problems from this seed (default: --seed), the same for every seed of a recipe",
    "problems_per_iteration": "problems drawn per iteration, each of --instances instances; every meta-step averages "
                              "their meta-gradients",
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="meta-train a learned optimizer", description=__doc__)
    add_options(p)
    p.set_defaults(func=run)


def add_options(p: argparse.ArgumentParser) -> None:
    add_family_options(p, required=False)
    defaults = MetaTrainSettings()
    choices = {"meta_lr_schedule": META_LR_SCHEDULES, "meta_loss": META_LOSSES}
    types = {"max_horizon": int, "eval_seed": int}
    for f in dataclasses.fields(MetaTrainSettings):
        p.add_argument(f"--{f.name.replace('_', '-')}", type=types.get(f.name) or type(getattr(defaults, f.name)),
                       default=getattr(defaults, f.name), choices=choices.get(f.name),
                       help=SETTING_HELP.get(f.name, f"meta-training setting {f.name}"))
    p.add_argument("--architecture", choices=ARCHITECTURES, default="lstm", help="the learned optimizer's network")
    p.add_argument("--hidden-size", type=int, default=None, help="units per layer (default: 20 for lstm, 32 for "
                                                                 "feature_mlp)")
    p.add_argument("--num-layers", type=int, default=2, help="layers")
    p.add_argument("--preprocess", choices=["log_sign", "none"], default=None,
                   help="gradient preprocessing, lstm only: log_sign (the paper's, the default) or none")
    p.add_argument("--output-scale", type=float, default=None,
                   help="scale of the output update (default: 0.1 for lstm, 0.003 for feature_mlp)")
    p.add_argument("--warmup", action="store_true", default=None,
                   help="feature_mlp only: its step-size factor grows over its first steps (up to 1.4x at the first)")
    p.add_argument("--step-memory", action="store_true", default=None,
                   help="feature_mlp only: it carries a learned log step size per coordinate from step to step")
    p.add_argument("--relative-correction", action="store_true", default=None,
                   help="feature_mlp only: its direction correction shrinks with the gradient's signal-to-noise ratio")
    p.add_argument("--correction-warmup", action="store_true", default=None,
                   help="feature_mlp only: its direction correction grows over its first steps (0.1x at the first)")
    p.add_argument("--memory-up-only", action="store_true", default=None,
                   help="feature_mlp with --step-memory only: the memory can raise the step, not lower it")
    p.add_argument("--eval-steps", type=int, default=None,
                   help="horizon of the final evaluation (default: --horizon)")
    p.add_argument("--eval-heldout", type=int, default=64, help="held-out instances in the final evaluation")
    p.add_argument("--no-eval", action="store_true", help="skip the final evaluation against the baselines")
    p.add_argument("--out", type=Path, help="folder to write the checkpoint to (required)")
    p.add_argument("--resume", action="store_true",
                   help=f"continue the interrupted run in --out (from OUT/{RESUME_FILE}) with the options it was "
                        "started with")


def run(args: argparse.Namespace) -> int:
    if args.out is None:
        raise CliError("l2o train needs --out, the folder to write the checkpoint to", ExitCode.USAGE)
    if args.resume:
        args, command = resumed(args)
    else:
        if args.family is None:
            raise CliError("l2o train needs --family (or --resume to continue the run in --out)", ExitCode.USAGE)
        if (args.out / RESUME_FILE).exists():
            raise CliError(f"{args.out} holds an interrupted run: continue it with `{go_on(args.out)}`, "
                           f"or delete {args.out / RESUME_FILE} to start over", ExitCode.USAGE)
        command = "l2o " + shlex.join(sys.argv[1:]) if sys.argv and sys.argv[0].endswith("l2o") else None
    family = make_family(args.family, **parse_params(args.param))
    settings = MetaTrainSettings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(MetaTrainSettings)})
    mlp = args.architecture == "feature_mlp"
    lstm_only = {"preprocess": args.preprocess} if args.preprocess is not None else {}
    mlp_only = {name: True for name in FEATURE_MLP_SWITCHES if getattr(args, name)}
    config = OptimizerConfig(
        architecture=args.architecture, hidden_size=args.hidden_size or (32 if mlp else 20),
        num_layers=args.num_layers, output_scale=args.output_scale or (0.003 if mlp else 0.1), **lstm_only, **mlp_only,
        trained_on={"family": family.name, "params": family.params(), "settings": settings.to_dict()},
        command=command)
    out: Path = args.out
    resume = load_resume(out) if args.resume else None
    out.mkdir(parents=True, exist_ok=True)
    (out / RUN_FILE).write_text(json.dumps({"command": command, "options": options_of(args)}, indent=2) + "\n")

    bar = ProgressBar(settings.iterations)
    last_eval: list[float | None] = [None]
    latest: list[ResumeCheckpoint | None] = [resume]

    def on_progress(p) -> None:
        if p.eval_loss is not None:
            last_eval[0] = p.eval_loss
        ev = f"{last_eval[0]:.4g}" if last_eval[0] is not None else "-"
        bar.update(p.iteration, elapsed=p.seconds, extra=f"meta-loss {p.meta_loss:.4g} eval {ev}")

    def on_checkpoint(checkpoint: ResumeCheckpoint) -> None:
        latest[0] = checkpoint
        if checkpoint.iteration % settings.resume_every == 0:
            save_resume(out, checkpoint)

    try:
        # The trainer hands over a resume checkpoint after every iteration (resume_every=1): a copy of a few
        # thousand weights, cheap beside the iteration, and what lets Ctrl-C save where the run stood.
        result = meta_train(family, config, dataclasses.replace(settings, resume_every=1), progress=on_progress,
                            resume=resume, on_resume_checkpoint=on_checkpoint)
    except KeyboardInterrupt:
        bar.close()
        if latest[0] is None:
            print("interrupted before the first iteration ended: nothing to resume", file=sys.stderr)
            (out / RUN_FILE).unlink(missing_ok=True)
        else:
            save_resume(out, latest[0])
            print(f"interrupted after iteration {latest[0].iteration} of {settings.iterations}; saved "
                  f"{out / RESUME_FILE}. Go on with: {go_on(out)}", file=sys.stderr)
        return ExitCode.INTERRUPTED
    bar.close()
    result.checkpoint.save(out)
    for name in (RESUME_FILE, RUN_FILE):
        (out / name).unlink(missing_ok=True)
    print(f"saved {out} (sha256 {result.checkpoint.digest[:16]}…, best validation loss {result.best_eval:.4g}, "
          f"{result.seconds:.0f} s, {result.optimizee_steps_per_s:,.0f} optimizee steps/s)")
    if not args.no_eval:
        report = evaluate(result.checkpoint, family, n_instances=args.eval_heldout,
                          steps=args.eval_steps or settings.horizon, seed=settings.seed + 1, device=settings.device)
        (out / "evaluation.json").write_text(json.dumps(report.to_dict()) + "\n")
        print(report.table())
    return 0


def options_of(args: argparse.Namespace) -> dict[str, Any]:
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k not in ("func", "resume")}


def go_on(out: Path) -> str:
    return f"l2o train --out {shlex.quote(str(out))} --resume"


def resumed(args: argparse.Namespace) -> tuple[argparse.Namespace, str | None]:
    """The options of the run in args.out, and the command that started it. An option given again must
    have the value the run was started with (any other would make a different run)."""
    path = args.out / RUN_FILE
    try:
        saved = json.loads(path.read_text())
    except FileNotFoundError:
        raise CliError(f"{args.out} holds no interrupted run (no {path})", ExitCode.NOT_FOUND) from None
    except ValueError as exc:
        raise CliError(f"{path} is not valid JSON: {exc}") from None
    blank = argparse.ArgumentParser()
    add_options(blank)
    defaults = vars(blank.parse_args([]))
    options = saved["options"]
    changed = sorted(k for k, v in vars(args).items()
                     if k in options and k != "out" and v != defaults.get(k) and v != options[k])
    if changed:
        raise CliError("the run was started with " + ", ".join(f"--{k.replace('_', '-')} {options[k]}" for k in changed)
                       + ": give the same, or none (--resume continues with the run's options)", ExitCode.USAGE)
    merged = {**defaults, **options, "out": args.out, "resume": True, "func": args.func}
    return argparse.Namespace(**merged), saved.get("command")


def load_resume(out: Path) -> ResumeCheckpoint:
    path = out / RESUME_FILE
    try:
        return ResumeCheckpoint.from_bytes(path.read_bytes())
    except FileNotFoundError:
        raise CliError(f"{out} holds no resume checkpoint (no {path})", ExitCode.NOT_FOUND) from None


def save_resume(out: Path, checkpoint: ResumeCheckpoint) -> None:
    path = out / RESUME_FILE
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(checkpoint.to_bytes())
    os.replace(partial, path)  # a Ctrl-C during the write leaves the previous checkpoint whole
