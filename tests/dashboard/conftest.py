"""Fixtures for the dashboard tests: a real `l2o serve` on 127.0.0.1 (embedded default, a temporary data
directory), an admin API client, and Debian's chromium driven by Playwright.

The browser is the system chromium (L2O_TEST_CHROMIUM overrides /usr/bin/chromium); Playwright never
downloads one. Without it the browser tests are skipped, or fail when CI=true. Each test's page records
console errors (a Content-Security-Policy violation is one) and every URL it requested, and the test fails
if there was an error or the API key appeared in a URL. Screenshots go to artifacts/screenshots/.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.live_server import REPO, ServeProcess, free_port

CHROMIUM = Path(os.environ.get("L2O_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
SCREENSHOTS = REPO / "artifacts" / "screenshots"
IN_CI = os.environ.get("CI", "").lower() == "true"
TIMEOUT_MS = 20_000
EXPECTED_HTTP_ERROR = re.compile(r"Failed to load resource: the server responded with a status of (401|422)")


def _unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"{reason}, and CI=true: the browser tests must run (apt-get install -y chromium)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser_available() -> None:
    """Skip (fail when CI=true) before anything starts when there is no browser to drive."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _unavailable("the playwright package is not installed (it is in the test extra)")
    if not CHROMIUM.exists():
        _unavailable(f"no chromium at {CHROMIUM}")


@pytest.fixture(scope="module")
def starting_server(browser_available: None,
                    tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServeProcess, Future]]:
    """`l2o serve` on its embedded default (registering the shipped pretrained optimizers), started on a
    thread: it takes seconds to import, and chromium launches meanwhile."""
    data = tmp_path_factory.mktemp("dashboard-data")
    env = {k: v for k, v in os.environ.items() if not k.startswith("L2O_")}
    # Short polls, so a tiny job's progress reaches the event stream iteration by iteration.
    env.update(L2O_DATA_DIR=str(data), L2O_JOB_POLL_S="0.05", L2O_JOB_DEVICE="cpu", L2O_LOG_LEVEL="warning")
    proc = ServeProcess(env, free_port(), data / "serve.log")
    with ThreadPoolExecutor(1) as pool:
        try:
            yield proc, pool.submit(proc.start)
        finally:
            proc.kill()


@pytest.fixture(scope="module")
def server(starting_server: tuple[ServeProcess, Future]) -> ServeProcess:
    proc, started = starting_server
    started.result()
    proc.admin_key = (Path(proc.env["L2O_DATA_DIR"]) / "admin.key").read_text().strip()
    return proc


@pytest.fixture(scope="module")
def api(server: ServeProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.admin_key}"},
                      timeout=30) as client:
        yield client


def wait_for_job(api: httpx.Client, job_id: str, states: set[str], timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job = api.get(f"/v1/jobs/{job_id}").raise_for_status().json()
        if job["state"] in states:
            return job
        assert time.monotonic() < deadline, f"job {job_id} still {job['state']} after {timeout} s: {job}"
        time.sleep(0.05)


def tiny_spec(name: str, seed: int = 0, iterations: int = 6) -> dict[str, Any]:
    """A job that trains, evaluates and publishes in about a second on the CPU."""
    return {
        "name": name,
        "family": {"name": "quadratic", "params": {"dim": 3}},
        "optimizer": {"hidden_size": 4, "num_layers": 1},
        "training": {"iterations": iterations, "horizon": 10, "unroll": 5, "instances": 2, "eval_every": 3,
                     "eval_instances": 2, "resume_every": 1000, "seed": seed},
        "evaluation": {"instances": 3, "steps": 10, "tune_instances": 2, "lr_grid": [0.01, 0.1],
                       "baselines": ["sgd", "adam"]},
    }


@pytest.fixture(scope="module")
def evaluation_jobs(api: httpx.Client) -> list[str]:
    """Two tiny jobs publishing versions of `dash-quad`, submitted early so they run while other tests do."""
    return [api.post("/v1/jobs", json=tiny_spec("dash-quad", seed=seed)).raise_for_status().json()["id"]
            for seed in (0, 1)]


@pytest.fixture(scope="module")
def evaluated(api: httpx.Client, evaluation_jobs: list[str]) -> dict[str, Any]:
    """The two versions of `dash-quad` those jobs published, each with its evaluation report."""
    versions = []
    for job_id in evaluation_jobs:
        done = wait_for_job(api, job_id, {"succeeded", "failed", "cancelled"})
        assert done["state"] == "succeeded", done
        versions.append(api.get(f"/v1/optimizers/dash-quad/versions/{done['result']['version']}").json())
    return {"name": "dash-quad", "versions": versions}


@pytest.fixture(scope="module")
def chromium(browser_available: None):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class Watched:
    """A page with what it logged and requested, checked when the test ends."""

    def __init__(self, page, base_url: str, key: str) -> None:
        self.page, self.base_url, self.key = page, base_url, key
        self.errors: list[str] = []
        self.urls: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        page.on("request", lambda r: self.urls.append(r.url))
        page.set_default_timeout(TIMEOUT_MS)

    def _console(self, message) -> None:
        # A refused request (401 on a wrong key, 422 on a bad spec) is logged by chromium as an error; the
        # tests provoke those on purpose and check the page's answer to them instead.
        if message.type == "error" and not EXPECTED_HTTP_ERROR.match(message.text):
            self.errors.append(f"console error: {message.text}")

    def goto(self, path: str) -> None:
        self.page.goto(self.base_url + path)

    def shot(self, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        self.page.evaluate("window.scrollTo(0, 0)")  # else the sticky top bar lands mid-image
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def check(self) -> None:
        assert not self.errors, "the page logged errors:\n" + "\n".join(self.errors)
        leaked = [u for u in self.urls if self.key in u]
        assert not leaked, f"the API key appeared in a URL: {leaked}"


@pytest.fixture
def browser_page(starting_server, chromium, server: ServeProcess) -> Iterator[Callable[..., Watched]]:
    """browser_page(signed_in=True) -> a fresh browser context's page; signed in means the admin key is
    already in localStorage, as the login page leaves it."""
    opened: list[tuple[Any, Watched]] = []

    def open_page(signed_in: bool = True, key: str | None = None, viewport: tuple[int, int] = (1280, 900)) -> Watched:
        key = key or server.admin_key
        context = chromium.new_context(viewport={"width": viewport[0], "height": viewport[1]})
        if signed_in:
            context.add_init_script(f"localStorage.setItem('l2o.apiKey', {key!r})")
        watched = Watched(context.new_page(), server.url, key)
        opened.append((context, watched))
        return watched

    yield open_page
    for context, watched in opened:
        watched.check()
        context.close()


def chart_info(page, selector: str) -> dict[str, Any]:
    """What a uPlot chart holds (series labels, values, drawable points) and how many of its canvas pixels
    are in the learned optimizer's colour (#7c3aed), i.e. whether its line was actually drawn."""
    return page.eval_on_selector(selector, """el => {
        const u = el.chart;
        const canvas = el.querySelector('canvas');
        const px = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
        let violet = 0;
        for (let i = 0; i < px.length; i += 4) {
            if (Math.abs(px[i] - 124) < 24 && Math.abs(px[i + 1] - 58) < 24 && Math.abs(px[i + 2] - 237) < 24
                && px[i + 3] > 200) violet++;
        }
        return {labels: u.series.slice(1).map(s => s.label), x: u.data[0], values: u.data.slice(1),
                points: u.data.slice(1).map(d => d.filter(v => v !== null).length), violet,
                width: canvas.width, height: canvas.height};
    }""")
