"""`pip install .` is the SDK alone: the client, and LocalOptimizer's core (service.lopt), import and step
with every server dependency missing."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVER_ONLY = ["fastapi", "starlette", "uvicorn", "pydantic", "pydantic_settings", "sqlalchemy", "alembic", "psycopg",
               "redis", "procrastinate", "jinja2", "prometheus_client", "sklearn", "matplotlib"]

SCRIPT = textwrap.dedent("""
    import importlib.abc, importlib.machinery, sys

    class Missing(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        # Importing a blocked module fails as if it were not installed. (A spec is still found: torch
        # asks find_spec about optional modules without importing them.)

        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                return importlib.machinery.ModuleSpec(name, self)

        def create_module(self, spec):
            raise ModuleNotFoundError(f"No module named {spec.name!r} (blocked: not an SDK dependency)")

    sys.meta_path.insert(0, Missing())
    import torch
    from client import Client, LocalOptimizer, RemoteOptimizer

    model = torch.nn.Linear(3, 2)
    opt = LocalOptimizer(model.parameters(), checkpoint=CHECKPOINT)
    model(torch.ones(4, 3)).sum().backward()
    opt.step()
    Client("http://127.0.0.1:9", "key").close()
    print(sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED))
""")


def test_the_sdk_imports_and_steps_locally_without_the_server_dependencies(tmp_path):
    from tests.conftest import checkpoint_bytes

    checkpoint = tmp_path / "opt.safetensors"
    checkpoint.write_bytes(checkpoint_bytes(hidden_size=4, num_layers=1, seed=3))
    code = f"BLOCKED = {set(SERVER_ONLY)!r}\nCHECKPOINT = {str(checkpoint)!r}\n" + SCRIPT
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"
