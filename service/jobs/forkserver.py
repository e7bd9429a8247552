"""What the forkserver that forks job processes imports once, so that each job starts warm.

Measured on a tiny job (2 iterations): 4.4 s in a cold child against 2.0 s warm; 4.5 s of a cold first run
is torch.optim importing torch._dynamo on first use. Imports only: an operation run here could start
torch's thread pool, and a pool does not survive a fork (the child's first parallel operation hangs).

The forkserver, and so every job forked from it, runs at a lower CPU priority (process.JOB_NICENESS) than the
process that answers steps: a step is someone's training loop waiting, a job is batch work. Measured at
1M coordinates on 2 cores: steps took 180-200 ms while these imports ran after start-up (110 ms once
they were done); niced, as fast as on an idle server.
"""

from __future__ import annotations

import os

# process.JOB_NICENESS, set before the imports below (they are the seconds of CPU this is about), and not
# read from there: importing it would import torch first.
os.nice(10)

import sklearn.datasets  # noqa: E402, F401  (the digits, for the classifier families)
import torch._dynamo  # noqa: E402, F401

import service.jobs.process  # noqa: E402, F401  (the child's entry point and everything it imports)
