"""`l2o train`: --resume-every writes resume checkpoints, Ctrl-C saves one and says how to go on, and
`--resume` finishes with the checkpoint an uninterrupted run gives. `l2o eval` on folders and references."""

from __future__ import annotations

import pytest

import service.cli.train as train_cli
from client import Client
from service.cli import main
from service.lopt import Checkpoint
from service.metatrain import ResumeCheckpoint
from tests.conftest import checkpoint_bytes

TINY = ["--family", "quadratic", "--param", "dim=3", "--iterations", "6", "--horizon", "4", "--unroll", "2",
        "--instances", "2", "--eval-every", "2", "--eval-instances", "2", "--hidden-size", "4", "--num-layers", "1",
        "--no-eval"]


def interrupt_at(monkeypatch: pytest.MonkeyPatch, iteration: int) -> None:
    """Ctrl-C while iteration `iteration` reports its progress (its resume checkpoint not yet handed over)."""
    real = train_cli.meta_train

    def meta_train(*args, progress, **kwargs):
        def tick(p):
            progress(p)
            if p.iteration == iteration:
                raise KeyboardInterrupt

        return real(*args, progress=tick, **kwargs)

    monkeypatch.setattr(train_cli, "meta_train", meta_train)


@pytest.mark.parametrize("architecture", [
    "lstm", "feature_mlp",
    "feature_mlp --warmup --step-memory --relative-correction --correction-warmup --memory-up-only"])
def test_ctrl_c_saves_a_resume_checkpoint_and_resume_finishes_the_same_run(tmp_path, monkeypatch, capsys,
                                                                           architecture):
    whole, split = tmp_path / "whole", tmp_path / "split"
    tiny = [*TINY, "--architecture", *architecture.split()]
    assert main(["train", *tiny, "--out", str(whole)]) == 0

    interrupt_at(monkeypatch, 5)
    assert main(["train", *tiny, "--out", str(split)]) == 130  # resume-every 10: only Ctrl-C writes one
    err = capsys.readouterr().err
    assert "interrupted after iteration 4 of 6" in err and f"l2o train --out {split} --resume" in err
    assert "Traceback" not in err and not (split / "weights.safetensors").exists()
    assert ResumeCheckpoint.from_bytes((split / "resume.pt").read_bytes()).iteration == 4

    monkeypatch.undo()
    assert main(["train", *tiny, "--out", str(split)]) == 2  # a new run would overwrite the interrupted one
    assert f"l2o train --out {split} --resume" in capsys.readouterr().err
    assert main(["train", "--out", str(split), "--resume", "--iterations", "9"]) == 2  # a resumed run keeps its options
    assert "started with --iterations 6" in capsys.readouterr().err
    assert main(["train", *tiny, "--out", str(split), "--resume"]) == 0  # the same options again are fine
    assert (split / "weights.safetensors").read_bytes() == (whole / "weights.safetensors").read_bytes()
    assert not (split / "resume.pt").exists() and not (split / "resume.json").exists()
    assert main(["train", "--out", str(tmp_path / "nothing"), "--resume"]) == 3
    config = Checkpoint.load(split).config
    options = (config.warmup, config.step_memory, config.relative_correction, config.correction_warmup,
               config.memory_up_only)
    assert options == ((True,) * 5 if "--step-memory" in architecture else (None,) * 5)


def test_resume_every_writes_a_checkpoint_at_each_multiple(tmp_path, monkeypatch):
    seen = []
    real = train_cli.save_resume
    monkeypatch.setattr(train_cli, "save_resume", lambda out, c: (seen.append(c.iteration), real(out, c)))
    assert main(["train", *TINY, "--resume-every", "3", "--out", str(tmp_path / "run")]) == 0
    assert seen == [3, 6]


def test_a_crash_resumes_from_the_last_resume_every_checkpoint(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    real = train_cli.meta_train

    def crashing(*args, progress, **kwargs):
        def tick(p):
            progress(p)
            if p.iteration == 5:
                raise RuntimeError("the machine went away")
        return real(*args, progress=tick, **kwargs)

    monkeypatch.setattr(train_cli, "meta_train", crashing)
    with pytest.raises(RuntimeError):
        main(["train", *TINY, "--resume-every", "2", "--out", str(out)])
    assert ResumeCheckpoint.from_bytes((out / "resume.pt").read_bytes()).iteration == 4
    monkeypatch.undo()
    assert main(["train", "--out", str(out), "--resume"]) == 0  # the options come from the run


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_eval_takes_a_folder_a_file_or_a_registry_reference(client, admin_key, tmp_path, capsys):
    import service.cli.eval as eval_cli
    from service.cli import build_parser

    quick = ["--steps", "3", "--instances", "2"]
    assert main(["train", *TINY, "--out", str(tmp_path / "run")]) == 0
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run"), *quick]) == 0  # the family it was trained on
    assert "adam" in capsys.readouterr().out.lower()
    assert main(["eval", str(tmp_path / "run" / "weights.safetensors"), *quick, "--family", "quadratic",
                 "--param", "dim=2"]) == 0

    sdk = Client(str(client.base_url), api_key=admin_key, http_client=client)
    sdk.optimizers.upload("mine", checkpoint_bytes())
    args = build_parser().parse_args(["eval", "mine@latest", *quick, "--family", "quadratic", "--param", "dim=2"])
    assert eval_cli.run(args, client=sdk) == 0
    assert "adam" in capsys.readouterr().out.lower()  # the report's table, beside the tuned baselines

    args = build_parser().parse_args(["eval", "mine@latest", *quick])  # an upload says nothing of its family
    with pytest.raises(Exception, match="give --family"):
        eval_cli.run(args, client=sdk)
    args = build_parser().parse_args(["eval", "nothing-here", *quick])
    with pytest.raises(Exception, match="no checkpoint folder or file nothing-here, nor in the registry"):
        eval_cli.run(args, client=sdk)


def test_eval_of_a_missing_folder_is_one_line_exit_3(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("L2O_API_KEY", "l2o_somekey")
    monkeypatch.setenv("L2O_URL", "http://127.0.0.1:9")
    assert main(["eval", str(tmp_path / "missing"), "--family", "quadratic"]) == 3
    err = capsys.readouterr().err
    assert err == f"error: no checkpoint folder or file {tmp_path / 'missing'}\n"
    assert main(["eval", "missing-name", "--family", "quadratic"]) == 5  # looked up on a server that is not there
