"""The dashboard in a real browser (system chromium, headless) against a real `l2o serve`: sign in, the
registry, a version's evaluation plot, comparing versions, submitting a job from the form and watching it
succeed, cancelling one, and the sessions page. Every page is saved as a screenshot under
artifacts/screenshots/."""

from __future__ import annotations

import json
import re

import httpx
import pytest

from tests.dashboard.conftest import IN_CI, chart_info, tiny_spec, wait_for_job
from tests.live_server import REPO

try:
    from playwright.sync_api import expect
except ImportError:
    if IN_CI:
        raise
    pytest.skip("the playwright package is not installed (it is in the test extra)", allow_module_level=True)

SHIPPED = sorted(p.name for p in (REPO / "service" / "pretrained").iterdir() if (p / "weights.safetensors").is_file())


@pytest.fixture(scope="module")
def listed(api: httpx.Client) -> list[str]:
    """The optimizers the registry should list: the shipped ones, or one uploaded here if none are shipped."""
    if not SHIPPED:
        from tests.conftest import checkpoint_bytes

        api.post("/v1/optimizers/uploaded-lstm/versions", content=checkpoint_bytes(),
                 headers={"Content-Type": "application/octet-stream"}).raise_for_status()
        return ["uploaded-lstm"]
    return SHIPPED


def test_sign_in_keeps_the_key_out_of_urls_and_lists_the_optimizers(browser_page, listed, server, evaluation_jobs):
    w = browser_page(signed_in=False)
    page = w.page
    w.goto("/")
    expect(page).to_have_url(re.compile(r"/ui/login\?next=%2Fui%2Foptimizers$"))
    page.fill("#key", "l2o_not-a-real-key")
    page.click("#login-submit")
    expect(page.locator("#login-error")).to_contain_text("refused")
    w.shot("login-refused")

    page.fill("#key", server.admin_key)
    page.click("#login-submit")
    expect(page).to_have_url(re.compile(r"/ui/optimizers$"))
    for name in listed:
        expect(page.locator(f'.optimizer-card[data-name="{name}"]')).to_be_visible()
    assert page.evaluate("localStorage.getItem('l2o.apiKey')") == server.admin_key
    expect(page.locator("#key-hint")).to_have_text(server.admin_key[:8] + "…")
    w.shot("optimizers")

    page.click("#sign-out")
    expect(page).to_have_url(re.compile(r"/ui/login\?next="))
    assert page.evaluate("localStorage.getItem('l2o.apiKey')") is None


def test_a_refused_key_sends_the_browser_back_to_sign_in(browser_page):
    w = browser_page(key="l2o_revoked-or-wrong")
    w.goto("/ui/jobs")
    expect(w.page).to_have_url(re.compile(r"/ui/login\?next=%2Fui%2Fjobs$"))
    expect(w.page.locator("#login-error")).to_contain_text("Signed out")


def test_shipped_optimizers_open_on_their_newest_version(browser_page, listed, api):
    w = browser_page()
    page = w.page
    for name in listed:
        detail = api.get(f"/v1/optimizers/{name}").json()
        w.goto(f"/ui/optimizers/{name}")
        expect(page.locator("#versions tbody tr")).to_have_count(detail["version_count"])
        w.shot(f"optimizer-{name}")
        page.click(f'#versions tr[data-version="{detail["latest_version"]}"] a.strong')
        expect(page).to_have_url(re.compile(rf"/ui/optimizers/{name}/versions/{detail['latest_version']}$"))
        version = api.get(f"/v1/optimizers/{name}/versions/{detail['latest_version']}").json()
        expect(page.locator("#lineage")).to_contain_text(version["sha256"])
        if version["evaluation"]:
            expect(page.locator("#eval-chart canvas")).to_be_visible()
            info = chart_info(page, "#eval-chart")
            learned = version["evaluation"].get("learned", "lstm")  # a held-out suite report names its own
            assert info["points"][0] == len(version["evaluation"]["curves"][learned]["mean"])
            assert info["violet"] > 100, "the learned optimizer's curve was not drawn"
        else:
            expect(page.locator("#eval-chart")).to_contain_text("No evaluation report")
        w.shot(f"version-{name}")


def test_a_version_page_plots_its_evaluation_beside_the_final_losses(browser_page, evaluated):
    w = browser_page()
    page = w.page
    v = evaluated["versions"][0]
    report = v["evaluation"]
    w.goto(f"/ui/optimizers/dash-quad/versions/{v['version']}")
    expect(page.locator("#eval-chart canvas")).to_be_visible()
    info = chart_info(page, "#eval-chart")
    # The learned optimizer first, then each tuned baseline; every step of every curve is a point.
    assert info["labels"] == ["LSTM (learned)", "sgd", "adam"]
    assert info["x"] == list(range(report["steps"] + 1))
    assert info["values"][0] == pytest.approx(report["curves"]["lstm"]["mean"])
    assert info["values"][2] == pytest.approx(report["curves"]["adam"]["mean"])
    assert info["points"] == [report["steps"] + 1] * 3
    assert info["violet"] > 100, "the learned optimizer's curve was not drawn"
    # Log scale: the y axis spans the curves' values, and its distribution is logarithmic.
    assert page.eval_on_selector("#eval-chart", "el => el.chart.scales.y.distr") == 3

    rows = page.locator("#final-losses tbody tr")
    order = sorted(report["final"], key=report["final"].get)
    assert rows.evaluate_all("rs => rs.map(r => r.dataset.optimizer)") == order
    expect(page.locator("#final-losses .tag")).to_have_count(1)
    expect(page.locator(f'#final-losses tr[data-optimizer="{report["best_baseline"]}"] .tag')).to_have_text("best")
    expect(page.locator("#eval-summary")).to_contain_text(report["best_baseline"])
    expect(page.locator("#lineage")).to_contain_text(f"job {v['job_id'][:8]}")
    expect(page.locator("#config")).to_contain_text("trained_on.params.dim")
    w.shot("version-evaluated")

    page.click("#lineage a")  # lineage: the job that made this version
    expect(page).to_have_url(re.compile(rf"/ui/jobs/{v['job_id']}$"))
    expect(page.locator("#state")).to_have_text("succeeded")


def test_two_versions_compare_on_one_plot(browser_page, evaluated):
    w = browser_page()
    page = w.page
    a, b = evaluated["versions"]
    w.goto("/ui/optimizers/dash-quad")
    page.check(f'#versions tr[data-version="{a["version"]}"] input[type=checkbox]')
    expect(page.locator("#compare")).to_be_disabled()
    page.check(f'#versions tr[data-version="{b["version"]}"] input[type=checkbox]')
    page.click("#compare")
    expect(page).to_have_url(re.compile(r"/ui/compare\?a=dash-quad%3A\d+&b=dash-quad%3A\d+$"))
    expect(page.locator("#compare-chart canvas")).to_be_visible()
    info = chart_info(page, "#compare-chart")
    assert info["labels"] == [f"{a['reference']} LSTM", f"{a['reference']} sgd", f"{a['reference']} adam",
                              f"{b['reference']} LSTM", f"{b['reference']} sgd", f"{b['reference']} adam"]
    assert info["values"][0] == pytest.approx(a["evaluation"]["curves"]["lstm"]["mean"])
    assert info["values"][3] == pytest.approx(b["evaluation"]["curves"]["lstm"]["mean"])
    assert info["violet"] > 100
    expect(page.locator("#compare-table tbody tr")).to_have_count(3)
    expect(page.locator("#mismatch")).to_be_hidden()  # same family, steps and instances
    w.shot("compare")


def test_a_job_submitted_from_the_form_runs_to_succeeded(browser_page, api, evaluated):
    w = browser_page()
    page = w.page
    w.goto("/ui/jobs/new")
    # Every field starts at the spec's default.
    expect(page.locator('[name="training.iterations"]')).to_have_value("200")
    expect(page.locator('[name="optimizer.hidden_size"]')).to_have_value("20")
    expect(page.locator('[name="family.params"]')).to_have_value('{"dim": 10, "init_std": 0.01}')
    assert page.locator('[name="evaluation.baselines"]:checked').count() == 4
    w.shot("job-new")

    # A spec the API refuses: the message names the field, the field is marked, nothing is submitted.
    page.fill('[name="name"]', "dash-form")
    page.fill('[name="training.unroll"]', "30")
    page.click("#submit")
    expect(page.locator("#form-error")).to_contain_text("multiple of unroll")
    expect(page.locator("[aria-invalid=true]")).to_have_count(2)  # the two fields the message names
    expect(page.locator('[name="training.horizon"]')).to_have_attribute("aria-invalid", "true")
    expect(page.locator('[name="training.unroll"]')).to_have_attribute("aria-invalid", "true")
    assert all(j["name"] != "dash-form" for j in api.get("/v1/jobs", params={"limit": 1000}).json())
    w.shot("job-new-refused")

    # Checked before sending: the family's parameters must be a JSON object; a new family brings its defaults.
    page.fill('[name="training.unroll"]', "20")
    page.fill('[name="family.params"]', '{"dim": ')
    page.click("#submit")
    expect(page.locator("#form-error")).to_contain_text("family.params: not valid JSON")
    expect(page.locator("[aria-invalid=true]")).to_have_count(1)
    page.select_option('[name="family.name"]', "mlp")
    assert json.loads(page.input_value('[name="family.params"]'))["hidden_sizes"] == [20]
    page.select_option('[name="family.name"]', "quadratic")

    small = {"training.iterations": "24", "training.horizon": "10", "training.unroll": "5", "training.instances": "2",
             "training.eval_every": "6", "training.eval_instances": "2", "training.resume_every": "1000",
             "optimizer.hidden_size": "4", "optimizer.num_layers": "1", "evaluation.instances": "3",
             "evaluation.steps": "10", "evaluation.tune_instances": "2", "evaluation.lr_grid": "0.01, 0.1",
             "family.params": '{"dim": 3}'}
    for name, value in small.items():
        page.fill(f'[name="{name}"]', value)
    page.uncheck('[name="evaluation.baselines"][value="nag"]')
    page.uncheck('[name="evaluation.baselines"][value="rmsprop"]')
    page.click("#submit")
    expect(page).to_have_url(re.compile(r"/ui/jobs/[0-9a-f]{32}$"))
    job_id = page.url.rsplit("/", 1)[1]
    expect(page.locator("body")).to_have_attribute("data-state", "succeeded", timeout=40_000)
    expect(page.locator("#progress")).to_have_attribute("aria-valuenow", "100")
    expect(page.locator("#cancel")).to_be_hidden()
    job = api.get(f"/v1/jobs/{job_id}").json()
    assert job["spec"]["training"]["iterations"] == 24 and job["spec"]["evaluation"]["baselines"] == ["sgd", "adam"]
    expect(page.locator("#result-link")).to_have_text(job["result"]["reference"])
    # The meta-training curve was drawn from the event stream: several iterations' meta-losses.
    info = chart_info(page, "#train-chart")
    assert info["labels"] == ["meta-loss", "validation loss"]
    assert info["points"][0] >= 2, info
    assert all(1 <= x <= 24 for x in info["x"])
    # And the published version's evaluation is shown below it.
    expect(page.locator("#eval-chart canvas")).to_be_visible()
    assert chart_info(page, "#eval-chart")["points"][0] == 11
    w.shot("job-succeeded")
    # Opened again once the job has ended, the page draws every iteration from the stored curve, the
    # validation losses where validation ran.
    w.goto(f"/ui/jobs/{job_id}")
    expect(page.locator("#eval-chart canvas")).to_be_visible()
    info = chart_info(page, "#train-chart")
    curve = api.get(f"/v1/jobs/{job_id}/curve").json()
    assert info["x"] == list(range(1, 25)) == curve["iterations"]
    validation = [v for v in curve["eval_loss"] if v is not None]
    assert len(validation) == 4 and [v for v in info["values"][1] if v is not None] == pytest.approx(validation)
    assert info["values"][0] == pytest.approx(curve["meta_loss"])
    expect(page.locator("#train-caption")).to_have_text("28 points")   # 24 meta-losses, 4 validation losses

    w.goto("/ui/jobs")
    row = page.locator(f'#jobs tr[data-job="{job_id}"]')
    expect(row).to_have_attribute("data-state", "succeeded")
    expect(row.locator(".progress")).to_have_attribute("aria-valuenow", "100")
    expect(row).to_contain_text(job["result"]["reference"])
    w.shot("jobs")


def test_a_running_job_is_cancelled_from_its_page(browser_page, api, evaluated):
    job = api.post("/v1/jobs", json=tiny_spec("dash-cancel", iterations=100_000)).raise_for_status().json()
    w = browser_page()
    page = w.page
    w.goto(f"/ui/jobs/{job['id']}")
    expect(page.locator("body")).to_have_attribute("data-state", "running", timeout=30_000)
    expect(page.locator("#progress-label")).not_to_have_text(re.compile(r"^Iteration 0 "))
    w.shot("job-running")
    w.goto("/ui/jobs")  # the list shows it running, its bar part-way
    row = page.locator(f'#jobs tr[data-job="{job["id"]}"]')
    expect(row).to_have_attribute("data-state", "running")
    assert 0 <= int(row.locator(".progress").get_attribute("aria-valuenow")) < 100
    w.shot("jobs-running")
    w.goto(f"/ui/jobs/{job['id']}")
    expect(page.locator("#cancel")).to_be_visible()
    page.click("#cancel")  # asks first; "keep it running" changes nothing
    page.click("#cancel-keep")
    expect(page.locator("#cancel-confirm")).to_be_hidden()
    assert api.get(f"/v1/jobs/{job['id']}").json()["cancel_requested"] is False
    page.click("#cancel")
    w.shot("job-cancel-confirm")
    page.click("#cancel-yes")
    expect(page.locator("body")).to_have_attribute("data-state", "cancelled", timeout=30_000)
    expect(page.locator("#cancel")).to_be_hidden()
    expect(page.locator("#result")).to_contain_text("nothing was published")
    done = wait_for_job(api, job["id"], {"cancelled", "succeeded", "failed"})
    assert done["state"] == "cancelled" and done["progress"]["iteration"] < 100_000
    w.shot("job-cancelled")


def test_sessions_lists_the_callers_live_sessions(browser_page, api, evaluated):
    ref = evaluated["versions"][0]["reference"]
    session = api.post("/v1/sessions", json={"optimizer": ref, "shapes": {"w": [3, 4], "b": [4]}}).json()
    api.post(f"/v1/sessions/{session['id']}/step",
             json={"step": 0, "grads": {"w": [[0.1] * 4] * 3, "b": [0.2] * 4}}).raise_for_status()
    w = browser_page()
    page = w.page
    w.goto("/ui/sessions")
    row = page.locator(f'#sessions tr[data-session="{session["id"]}"]')
    expect(row).to_be_visible()
    cells = row.locator("td").all_inner_texts()
    assert cells[0] == session["id"]
    assert cells[1] == ref
    assert cells[2] == "2 parameters"
    assert cells[3] == "16"  # coordinates
    assert cells[4] == "1"  # steps applied
    assert cells[5].endswith("ago")
    assert re.fullmatch(r"\d+(\.\d)? (B|KiB|MiB)", cells[7]) and session["state_bytes"] > 0
    expect(page.locator("#total-memory")).to_contain_text("live")
    w.shot("sessions")
    api.delete(f"/v1/sessions/{session['id']}")


def test_pages_fold_to_one_column_on_a_phone(browser_page, evaluated):
    w = browser_page(viewport=(390, 844))
    page = w.page
    v = evaluated["versions"][0]
    w.goto(f"/ui/optimizers/dash-quad/versions/{v['version']}")
    expect(page.locator("#eval-chart canvas")).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= 390, "the page scrolls sideways"
    chart = page.locator("#eval-chart").bounding_box()
    table = page.locator("#final-losses").bounding_box()
    assert table["y"] > chart["y"] + chart["height"] - 1, "the table should sit below the chart"
    w.shot("version-phone")
