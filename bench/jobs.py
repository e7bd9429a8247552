"""One meta-training job through the job runner on each device: `python -m bench.jobs [--json PATH]`.

Runs the same spec (the paper's quadratic setup unless told otherwise) with `run_job` against a scratch
SQLite database, once per device (cpu, and cuda when torch sees one), and prints meta-iterations per second
as the job row records them (iterations over seconds of meta-training, evaluation excluded).

    python -m bench.jobs --iterations 50 --json bench-jobs.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from service.jobs import repository as repo
from service.jobs.runner import Outcome, RunnerConfig, run_job
from service.jobs.spec import JobSpec
from service.registry import migrate
from service.registry.db import Database
from service.registry.models import Job


def run_once(spec: JobSpec, device: str, workdir: Path) -> dict[str, Any]:
    url = f"sqlite:///{workdir / device.replace(':', '_')}.db"
    migrate.upgrade(url)
    db = Database(url)
    with db.session() as s:
        job = repo.add_job(s, Job(spec=spec.model_dump(mode="json"), state=repo.QUEUED,
                                  total_iterations=spec.training.iterations))
        s.commit()
    began = time.perf_counter()
    outcome = run_job(job.id, db, RunnerConfig(device=device, lease_s=60.0))
    wall = time.perf_counter() - began
    with db.session() as s:
        row = repo.get_job(s, job.id)
    db.dispose()
    if outcome is not Outcome.SUCCEEDED:
        raise SystemExit(f"the job on {device} ended {outcome}: {row.error}")
    return {"device": device, "iterations": row.iteration, "train_s": row.elapsed_s,
            "iterations_per_s": row.iteration / row.elapsed_s, "job_wall_s": wall}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--family", default="quadratic")
    parser.add_argument("--instances", type=int, default=32)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    spec = JobSpec(name="bench-job", family={"name": args.family},
                   training={"iterations": args.iterations, "instances": args.instances},
                   evaluation={"instances": 16, "lr_grid": [1e-3, 1e-2, 1e-1]})
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run_once(spec, device, Path(tmp)) for device in devices]
    print(f"{'device':<8} {'iterations':>10} {'train s':>9} {'it/s':>8} {'job wall s':>11}")
    for r in rows:
        print(f"{r['device']:<8} {r['iterations']:>10} {r['train_s']:>9.2f} {r['iterations_per_s']:>8.2f} "
              f"{r['job_wall_s']:>11.2f}")
    if len(rows) == 2:
        print(f"cuda / cpu: {rows[1]['iterations_per_s'] / rows[0]['iterations_per_s']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"spec": spec.model_dump(mode="json"), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
