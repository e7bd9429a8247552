"""One job in a process of its own: its memory cap, its lifeline, and the supervision that bounds cancel and stop.

Why a process: a job's memory is its spec's to grow (a train key once grew the API process to 22 GB, and
the kernel's kill took every memory-store session with it). The child caps its address space at
L2O_JOB_MAX_MEMORY_BYTES, so an allocation past the cap fails inside the child and the job ends `failed`
saying so, while the process that started it lives on.

Children are forked from a forkserver that imported torch and the runner once (forkserver.py): a fork
costs about 0.2 s here, a fresh interpreter 5 s of imports. The child holds the read end of a pipe whose
write end only its supervisor holds; when the supervisor dies (even by SIGKILL) the pipe reads EOF and the
child exits, so a job never outlives the process answerable for it.

The supervisor polls the job's row: a cancel, or a stop of the supervisor itself (SIGTERM), that the child
has not honoured within L2O_JOB_STOP_GRACE_S gets the child killed (evaluation checks nothing between its
rollouts, and one training iteration can be long); the supervisor then ends the job cancelled, or hands it
back to the queue, where it resumes from its last resume checkpoint.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import resource
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection

from service.jobs import lease
from service.jobs import repository as repo
from service.jobs.runner import Outcome, RunnerConfig, run_job
from service.registry.db import Database

log = logging.getLogger(__name__)

# Added to the server's niceness for the forkserver and every job it forks (forkserver.py says why).
JOB_NICENESS = 10
_CONTEXT = multiprocessing.get_context("forkserver")
_CONTEXT.set_forkserver_preload(["service.jobs.forkserver"])

# How the child's outcome crosses back: its exit status. Anything else is a crash.
EXIT_CODES = {outcome: 64 + i for i, outcome in enumerate(Outcome)}
OUTCOMES = {code: outcome for outcome, code in EXIT_CODES.items()}
ORPHANED = 90  # the supervisor died: the child stops where it is

# How often the supervisor looks at the row and the stop flag: far below the 5 s a cancel may take.
TICK_S = 0.2


@dataclass(frozen=True)
class ProcessConfig:
    """What a job process needs beside the runner's own config."""

    db_url: str
    max_memory_bytes: int  # 0: no cap
    stop_grace_s: float
    log_level: str = "info"

    @classmethod
    def from_settings(cls, settings) -> ProcessConfig:
        return cls(settings.db_url, settings.job_max_memory_bytes, settings.job_stop_grace_s, settings.log_level)


def warm_up(*, wait: bool = False) -> None:
    """Start the forkserver now (its imports take seconds) rather than when the first job comes; with
    `wait`, return once it has finished them (it has forked a child)."""
    from multiprocessing import forkserver

    forkserver.ensure_running()
    if wait:
        child = _CONTEXT.Process(target=os.getpid, name="l2o-warm-up")
        child.start()
        child.join()
        child.close()


def run_in_process(job_id: str, config: RunnerConfig, process: ProcessConfig,
                   should_stop: Callable[[], bool] = lambda: False, *, takeover: bool = False) -> Outcome:
    """Run job `job_id` in a child process and wait for it, bounding how long a cancel or a stop may take."""
    lifeline_r, lifeline_w = _CONTEXT.Pipe(duplex=False)
    child = _CONTEXT.Process(target=_child_main, name=f"l2o-job-{job_id[:8]}", daemon=False,
                             args=(job_id, config, process, lifeline_r, takeover))
    child.start()
    lifeline_r.close()
    db = Database(process.db_url)
    deadline, reason = None, None
    try:
        while child.exitcode is None:
            child.join(TICK_S)
            if child.exitcode is not None:
                break
            if reason is None and should_stop():
                reason, deadline = "stop", time.monotonic() + process.stop_grace_s
                child.terminate()  # SIGTERM: the child hands the job back at its next iteration
            if reason != "cancel" and _cancel_requested(db, job_id):
                reason = "cancel"
                deadline = min(deadline or float("inf"), time.monotonic() + process.stop_grace_s)
            if deadline is not None and time.monotonic() > deadline:
                log.warning("job %s: its process did not %s within %.1f s; killing it", job_id,
                            "stop" if reason == "stop" else "honour the cancel", process.stop_grace_s)
                child.kill()
                child.join()
        return _settle(db, job_id, child, reason)
    finally:
        lifeline_w.close()
        child.join()
        child.close()
        db.dispose()


def _cancel_requested(db: Database, job_id: str) -> bool:
    try:
        with db.session() as s:
            ctl = repo.control(s, job_id)
    except Exception:
        log.debug("job %s: could not read its row", job_id, exc_info=True)
        return False
    return ctl is not None and ctl.cancel_requested


def _settle(db: Database, job_id: str, child, reason: str | None) -> Outcome:
    """The child's outcome; where it ended without saying (killed, crashed), end the job for it."""
    code = child.exitcode
    if code in OUTCOMES:
        return OUTCOMES[code]
    with db.session() as s:
        ctl = repo.control(s, job_id)
    if ctl is None or ctl.state != repo.RUNNING or lease.pid_of(ctl.lease_owner) != child.pid:
        return Outcome.LOST  # the child had not claimed it, or had ended it, or lost it
    owner = ctl.lease_owner
    with db.session() as s:
        if ctl.cancel_requested:
            done, outcome = repo.finish(s, job_id, owner, repo.CANCELLED), Outcome.CANCELLED
        elif reason == "stop":
            done, outcome = repo.release(s, job_id, owner), Outcome.INTERRUPTED
        elif code is not None and code < 0:
            done, outcome = repo.finish(s, job_id, owner, repo.FAILED, error=_signal_reason(-code)), Outcome.FAILED
        else:
            # An exception escaped the runner (the database went away): leave the row; the job resumes
            # once its owner is seen to be gone, and counts as a failed start.
            log.error("job %s: its process exited with status %s", job_id, code)
            return Outcome.LOST
        s.commit()
    log.info("job %s %s after its process was ended (exit status %s)", job_id, outcome.value, code)
    return outcome if done else Outcome.LOST


def _signal_reason(signum: int) -> str:
    name = signal.Signals(signum).name if signum in signal.Signals.__members__.values() else f"signal {signum}"
    if signum == signal.SIGKILL:
        return (f"the job's process was killed ({name}), most likely by the kernel for lack of memory: lower the "
                "job's size or raise L2O_JOB_MAX_MEMORY_BYTES")
    return f"the job's process died of {name}"


# --- the child ----------------------------------------------------------------------------------------


def _child_main(job_id: str, config: RunnerConfig, process: ProcessConfig, lifeline: Connection,
                takeover: bool) -> None:
    logging.basicConfig(level=process.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C reaches the supervisor, which decides
    threading.Thread(target=_watch_lifeline, args=(lifeline,), daemon=True, name="l2o-lifeline").start()
    if not config.device.startswith("cuda"):  # CUDA reserves far more address space than it uses
        cap_memory(process.max_memory_bytes)
    db = Database(process.db_url)
    try:
        outcome = run_job(job_id, db, config, should_interrupt=stop.is_set, takeover=takeover)
    finally:
        db.dispose()
    logging.shutdown()
    os._exit(EXIT_CODES[outcome])  # no interpreter teardown: torch's threads have nothing left to do


def _watch_lifeline(lifeline: Connection) -> None:
    try:
        lifeline.recv()
    except (EOFError, OSError):
        pass
    os._exit(ORPHANED)


def cap_memory(max_bytes: int) -> None:
    """Cap this process's address space; 0 leaves it as it is."""
    if max_bytes > 0:
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        soft = max_bytes if hard == resource.RLIM_INFINITY else min(max_bytes, hard)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
