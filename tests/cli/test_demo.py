"""`l2o demo` against a server on 127.0.0.1 (here an in-process uvicorn; `.ci/run` runs the whole demo, which
starts its own `l2o serve`)."""

from __future__ import annotations

import json
import math
import threading
import time
from types import SimpleNamespace

import pytest
import uvicorn

from service.app import create_app
from service.cli import build_parser
from service.cli.demo import DemoError, free_port, mlp_params, pick_optimizer
from service.config import Settings
from service.lopt import Checkpoint
from tests.conftest import checkpoint_bytes


@pytest.fixture
def server_url(tmp_path, monkeypatch):
    data, pretrained = tmp_path / "data", tmp_path / "pretrained"
    Checkpoint.from_bytes(checkpoint_bytes(hidden_size=4, num_layers=1, seed=5)).save(pretrained / "tiny")
    app = create_app(Settings(data_dir=data, pretrained_dir=pretrained))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the test server did not start"
        time.sleep(0.02)
    monkeypatch.delenv("L2O_API_KEY", raising=False)
    monkeypatch.setenv("L2O_DATA_DIR", str(data))  # the demo's client finds the embedded server's key file
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=30)


def test_the_demo_trains_both_models_prints_the_table_and_writes_the_plot(server_url, tmp_path, capsys):
    out = tmp_path / "demo"
    args = build_parser().parse_args(["demo", "--url", server_url, "--steps", "4", "--out", str(out)])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert out.joinpath("loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    curves = json.loads(out.joinpath("curves.json").read_text())
    assert curves["optimizer"] == "tiny:1" and curves["steps"] == [0, 1, 2, 3, 4]
    assert len(curves["l2o"]) == len(curves["adam"]) == 5 and len(curves["step_ms"]) == 4
    assert all(math.isfinite(v) for v in curves["l2o"] + curves["adam"])
    assert curves["l2o"][0] == curves["adam"][0]  # the same start
    assert curves["adam"][-1] < curves["adam"][0]
    assert f"wrote the plot to {out.joinpath('loss.png').resolve()}" in printed
    assert "tiny:1 (remote)" in printed and "l2o jobs submit" in printed and "/v1/jobs" in printed


def test_the_demo_picks_a_shipped_optimizer_and_says_when_there_is_none():
    def registry(*names):
        optimizers = [SimpleNamespace(name=n, latest_version=1) for n in names]
        resolve = lambda ref: SimpleNamespace(reference=f"{ref}:1")  # noqa: E731
        return SimpleNamespace(optimizers=SimpleNamespace(list=lambda: optimizers, resolve=resolve))

    assert pick_optimizer(registry("zeta", "quadratic-lstm", "digits-mlp-lstm"), None).reference == "digits-mlp-lstm:1"
    assert pick_optimizer(registry("zeta", "quadratic-lstm"), None).reference == "quadratic-lstm:1"
    assert pick_optimizer(registry("zeta", "alpha"), None).reference == "alpha:1"
    assert pick_optimizer(registry("zeta"), "zeta@prod").reference == "zeta@prod:1"
    with pytest.raises(DemoError, match="holds no optimizer"):
        pick_optimizer(registry(), None)


def test_the_demo_trains_the_mlp_its_optimizer_was_meta_trained_on():
    trained = {"trained_on": {"family": "mlp", "params": {"hidden_sizes": [8, 8], "activation": "relu",
                                                           "batch_size": 32}}}
    assert mlp_params(trained) == {"hidden_sizes": [8, 8], "activation": "relu", "batch_size": 32}
    assert mlp_params({"trained_on": {"family": "quadratic", "params": {"dim": 10}}})["hidden_sizes"] == [20]
