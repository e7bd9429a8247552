"""The wheel is the product: built from this tree, installed into a fresh virtualenv outside it, it migrates
a database, serves, and steps through its own SDK. Nothing is downloaded: the wheel is built without an
isolated build environment and installed without dependencies, which the new venv reuses from this one."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import time
import zipfile
from pathlib import Path

import httpx
import pytest

from service.cli.demo import free_port

ROOT = Path(__file__).resolve().parents[2]
# What a checkout gathers beside the source (environments, caches, test and demo output): not copied.
SKIP = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "data",
                              "artifacts", "l2o-demo", "out", ".l2o")


def run(*cmd: str | Path, cwd: Path, env: dict[str, str] | None = None, timeout: float = 300) -> str:
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{cmd} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Built from a copy, so the checkout gets no build/ or egg-info."""
    work = tmp_path_factory.mktemp("wheel")
    shutil.copytree(ROOT, work / "src", ignore=SKIP)
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", work / "dist",
        work / "src", cwd=work)
    [built] = (work / "dist").glob("l2o-*.whl")
    return built


def test_the_wheel_carries_migrations_checkpoints_and_no_tests(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "service/migrations/env.py" in names and "service/migrations/script.py.mako" in names
    assert any(n.startswith("service/migrations/versions/0001_") for n in names)
    assert any(n.startswith("service/migrations/sql/") and n.endswith(".sql") for n in names)
    assert "service/pretrained/quadratic-lstm/weights.safetensors" in names
    assert "client/__init__.py" in names and "service/lopt/functional.py" in names
    assert not any(n.startswith(("tests/", "bench/", "migrations/")) for n in names)
    # `pip install .` brings the SDK's dependencies only; the service's come with the `server` extra.
    [metadata] = [n for n in names if n.endswith(".dist-info/METADATA")]
    requires = [line.split(":", 1)[1] for line in zipfile.ZipFile(wheel).read(metadata).decode().splitlines()
                if line.startswith("Requires-Dist:")]
    base = {re.split(r"[\s<>=\[;]", r.strip(), maxsplit=1)[0].lower() for r in requires if "extra ==" not in r}
    assert base == {"torch", "numpy", "safetensors", "httpx", "httpx-sse", "platformdirs"}
    assert any("fastapi" in r and 'extra == "server"' in r for r in requires)


@pytest.mark.slow
def test_an_installed_wheel_upgrades_its_database_serves_and_steps(wheel, tmp_path):
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path)
    # This environment's packages (torch and the rest) under the new one's, so that nothing is downloaded;
    # the wheel's own files come first.
    [site] = (venv / "lib").glob("python*/site-packages")
    (site / "zz_reuse.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run(sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "--no-deps", "-q", wheel,
        cwd=tmp_path)

    env = {k: v for k, v in os.environ.items() if not k.startswith(("L2O_", "PYTHON"))}
    env.update(L2O_DATA_DIR=str(tmp_path / "data"), PATH=f"{venv / 'bin'}{os.pathsep}{env['PATH']}")
    where = run(venv / "bin" / "python", "-c", "import client, service; print(client.__file__, service.__file__)",
                cwd=tmp_path, env=env)
    assert where.count(str(site)) == 2, where   # the installed package, not this checkout

    run(venv / "bin" / "l2o", "db", "upgrade", cwd=tmp_path, env=env)
    assert (tmp_path / "data" / "l2o.db").exists()
    step = textwrap.dedent("""
        import sys, torch
        from client import Client, RemoteOptimizer
        model = torch.nn.Linear(3, 2)
        before = model.weight.detach().clone()
        with Client(sys.argv[1]) as l2o:   # the key the server wrote to L2O_DATA_DIR
            opt = RemoteOptimizer(model.parameters(), optimizer="quadratic-lstm", client=l2o)
            model(torch.ones(4, 3)).sum().backward()
            opt.step()
            print(l2o.sessions.get(opt.session_id).step, bool((model.weight != before).any()))
    """)
    port = free_port()
    with open(tmp_path / "serve.log", "wb") as log:
        server = subprocess.Popen([venv / "bin" / "l2o", "serve", "--host", "127.0.0.1", "--port", str(port)],
                                  cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 240
        while not ready(url):
            assert server.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(0.5)
        assert run(venv / "bin" / "python", "-c", step, url, cwd=tmp_path, env=env).split() == ["1", "True"]
    finally:
        server.terminate()
        server.wait(timeout=60)


def ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False
