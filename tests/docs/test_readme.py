"""The README runs: every ```bash, ```sh and ```python block in README.md is executed, in order, against a
live `l2o serve` that this module starts on the embedded SQLite default in a temporary home.

A block that must not run (it installs, deploys, serves forever or meta-trains for minutes) says so on the
line before it with `<!-- not-run: reason -->`; that list is kept short (MAX_NOT_RUN). Shell blocks run
under `bash -euo pipefail` with the environment the README tells users to set (`L2O_URL`, `L2O_API_KEY`)
and the venv's `l2o` and `python` first on the PATH; every `curl` in them fails the block on an HTTP error
(a `.curlrc` with `--fail-with-body`), so an example that stopped working turns this test red. Python
blocks run with the venv's python. Each block is bounded by BLOCK_TIMEOUT_S. The working directory is a
temporary folder in which `service` links to the checkout's, so the README's relative paths hold and
the files the examples write land outside the checkout.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.live_server import ServeProcess, free_port

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
RUN_LANGUAGES = {"bash": "bash", "sh": "bash", "python": "python"}
NOT_RUN = re.compile(r"^\s*<!--\s*not-run:\s*(?P<reason>\S.*?)\s*-->\s*$")
FENCE = re.compile(r"^(?P<indent>\s*)```(?P<lang>[A-Za-z0-9_+-]*)\s*$")
BLOCK_TIMEOUT_S = 300
MAX_NOT_RUN = 12


@dataclass(frozen=True)
class Block:
    line: int           # of the opening fence, 1-based
    language: str
    code: str
    not_run: str | None  # the marker's reason

    @property
    def id(self) -> str:
        return f"L{self.line}-{self.language}"


def blocks(text: str) -> list[Block]:
    """Every fenced block of `text`, with the not-run marker on the line before its fence, if any."""
    out, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if not fence or not fence.group("lang"):
            i += 1
            continue
        indent, start = fence.group("indent"), i
        body = []
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i])
            i += 1
        marker = NOT_RUN.match(lines[start - 1]) if start > 0 else None
        out.append(Block(start + 1, fence.group("lang"), "\n".join(body) + "\n",
                         marker.group("reason") if marker else None))
        i += 1
    return out


ALL = blocks(README.read_text())
RUNNABLE = [b for b in ALL if b.language in RUN_LANGUAGES and b.not_run is None]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory):
    """`l2o serve` on the embedded default in a fresh home (so `~/.local/share/l2o/admin.key` is its admin
    key), and the environment and working directory the blocks run in."""
    home = tmp_path_factory.mktemp("home")
    work = home / "work"
    work.mkdir()
    (work / "service").symlink_to(REPO / "service")
    (home / ".curlrc").write_text("--fail-with-body\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("L2O_", "XDG_"))}
    venv_bin = str(Path(sys.executable).parent)
    env.update(HOME=str(home), CURL_HOME=str(home), PYTHONPATH=str(REPO), PATH=f"{venv_bin}:{env.get('PATH', '')}",
               OMP_NUM_THREADS="1", L2O_KERNEL="torch", PYTHONUNBUFFERED="1")
    server = ServeProcess(env, free_port(), home / "serve.log").start(timeout=180)
    try:
        key = (home / ".local/share/l2o/admin.key").read_text().strip()
        yield {**env, "L2O_URL": server.url, "L2O_API_KEY": key}, work, server
    finally:
        server.terminate()


@pytest.mark.parametrize("block", RUNNABLE, ids=[b.id for b in RUNNABLE])
def test_the_readme_block_runs(block: Block, live):
    env, work, server = live
    if RUN_LANGUAGES[block.language] == "bash":
        argv = ["bash", "-euo", "pipefail", "-c", block.code]
    else:
        script = work / f"readme_{block.line}.py"
        script.write_text(block.code)
        argv = [sys.executable, str(script)]
    try:
        result = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"README.md line {block.line}: still running after {BLOCK_TIMEOUT_S} s\n{exc.stdout}\n{exc.stderr}")
    assert result.returncode == 0, (f"README.md line {block.line} ({block.language}) exited {result.returncode}\n"
                                    f"--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-4000:]}\n"
                                    f"--- server log\n{server.log.read_text()[-2000:]}")


def test_few_blocks_are_kept_from_running_and_each_says_why():
    held = [b for b in ALL if b.not_run is not None]
    assert len(held) <= MAX_NOT_RUN, [(b.line, b.not_run) for b in held]
    assert all(b.language in RUN_LANGUAGES for b in held), "a not-run marker on a block that never runs"
    assert len(RUNNABLE) >= 10


def test_the_registry_features_are_among_the_blocks_that_run():
    ran = "".join(b.code for b in RUNNABLE)
    for feature in ("-X PATCH", "/evaluate", "?q=quad&tag=", "-X DELETE $URL/v1/optimizers/my-lstm ",
                    "optimizers search", "optimizers tag", "optimizers describe", "optimizers evaluate",
                    "--all-versions", "optimizers.update(", "optimizers.evaluate(", "optimizers.list(q="):
        assert feature in ran, f"no README block that runs uses {feature!r}"


def test_the_block_parser_reads_markers_and_indented_fences():
    text = ("a\n<!-- not-run: deploys -->\n```bash\ndocker compose up\n```\n\n"
            "  ```sh\n  echo hi\n  ```\n```json\n{}\n```\n")
    parsed = blocks(text)
    assert [(b.line, b.language, b.code, b.not_run) for b in parsed] == [
        (3, "bash", "docker compose up\n", "deploys"), (7, "sh", "echo hi\n", None), (10, "json", "{}\n", None)]
