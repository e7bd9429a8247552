"""`l2o worker`: run meta-training jobs from the database until stopped (SIGINT/SIGTERM hand the running
job back to the queue; it resumes from its last checkpoint on whichever worker takes it next).

With PostgreSQL run any number, on any machines that reach the database; with the embedded SQLite default
the server runs jobs itself and a worker is optional. Settings come from the same L2O_ environment
variables as the server (L2O_DATABASE_URL, L2O_JOB_DEVICE, L2O_JOB_LEASE_S, ...).
"""

from __future__ import annotations

import argparse
import logging
import sys

from service.errors import L2OError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("worker", help="run meta-training jobs", description=__doc__)
    p.add_argument("--concurrency", type=int, default=None,
                   help="jobs run at once by this process (default: L2O_WORKER_CONCURRENCY, 1)")
    p.add_argument("--burst", action="store_true", help="exit once no job is left to run")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from service.cli.health import worker_heartbeat
    from service.config import Settings
    from service.jobs.worker import run_worker

    settings = Settings()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.concurrency is not None and args.concurrency < 1:
        print("error: --concurrency must be at least 1", file=sys.stderr)
        return 2
    try:
        with worker_heartbeat(settings):
            run_worker(settings, concurrency=args.concurrency, burst=args.burst)
    except (L2OError, RuntimeError, ValueError) as exc:
        print(f"error: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return 1
    return 0
