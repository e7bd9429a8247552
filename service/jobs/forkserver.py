"""What the forkserver that forks job processes imports once, so that each job starts warm.

Measured on a tiny job (2 iterations): 4.4 s in a cold child against 2.0 s warm; 4.5 s of a cold first run
is torch.optim importing torch._dynamo on first use. Imports only: an operation run here could start
torch's thread pool, and a pool does not survive a fork (the child's first parallel operation hangs).
"""

from __future__ import annotations

import sklearn.datasets  # noqa: F401  (the digits, for the classifier families)
import torch._dynamo  # noqa: F401

import service.jobs.process  # noqa: F401  (the child's entry point and everything it imports)
