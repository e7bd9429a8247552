"""The dashboard's shells and assets through the app (no browser): routes, security headers, the job form's
defaults, and that every script a page loads, and every module those import, is served."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from typing import Any

import pytest

from service.api.dashboard import HERE
from service.jobs.spec import JobSpec

PAGES = ["/ui/login", "/ui/optimizers", "/ui/optimizers/quad", "/ui/optimizers/quad/versions/3",
         "/ui/compare?a=quad:1&b=quad@prod", "/ui/jobs", "/ui/jobs/new", "/ui/jobs/0123abcd", "/ui/sessions"]
STATIC = HERE / "static"


@pytest.fixture
def database_url(sqlite_migrated, tmp_path) -> str:
    """The shells read no database, so SQLite alone (the registry's tests cover both backends)."""
    import shutil

    shutil.copyfile(sqlite_migrated, tmp_path / "l2o.db")
    return f"sqlite:///{tmp_path / 'l2o.db'}"


class Elements(HTMLParser):
    """Every start tag's attributes, by tag."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.found: dict[str, list[dict[str, str | None]]] = {}
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.found.setdefault(tag, []).append(dict(attrs))


@pytest.mark.parametrize("path", ["/", "/ui", "/ui/"])
def test_the_root_opens_the_optimizers_page(client, path):
    r = client.get(path, follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == "/ui/optimizers"


def test_every_page_is_a_public_shell_with_a_strict_content_security_policy(client):
    for path in PAGES:
        r = client.get(path)  # no key: the shells hold no data, their scripts fetch it with the key
        assert r.status_code == 200, path
        assert r.headers["content-type"].startswith("text/html")
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["referrer-policy"] == "no-referrer"
        scripts = Elements(r.text).found["script"]
        # Only same-origin scripts and JSON data blocks; no inline code.
        for s in scripts:
            assert s.get("src", "").startswith("/ui/static/") or s.get("type") == "application/json", (path, s)


def test_every_script_and_stylesheet_a_page_loads_is_served(client):
    seen = set()
    for path in PAGES:
        found = Elements(client.get(path).text).found
        urls = [s["src"] for s in found["script"] if s.get("src")]
        urls += [link["href"] for link in found["link"] if link.get("href", "").startswith("/ui/static/")]
        for url in urls:
            if url in seen:
                continue
            seen.add(url)
            r = client.get(url)
            assert r.status_code == 200, url
            kind = "text/css" if url.split("?")[0].endswith(".css") else "javascript"
            if url.split("?")[0].endswith((".js", ".css")):
                assert kind in r.headers["content-type"], (url, r.headers["content-type"])
    assert any("/js/pages/job.js" in u for u in seen) and any("uPlot.iife.min.js" in u for u in seen)


def test_every_module_import_resolves_to_a_served_file(client):
    for module in sorted(STATIC.glob("js/**/*.js")):
        for target in re.findall(r'^import .* from "(\.[^"]+)";$', module.read_text(), flags=re.M):
            resolved = (module.parent / target).resolve()
            assert resolved.is_file(), f"{module.relative_to(STATIC)} imports missing {target}"
            url = "/ui/static/" + resolved.relative_to(STATIC).as_posix()
            assert client.get(url).status_code == 200, url


def test_static_files_outside_the_folder_are_not_served(client):
    for path in ["/ui/static/../dashboard.py", "/ui/static/%2e%2e/dashboard.py", "/ui/static/missing.js"]:
        assert client.get(path).status_code == 404, path


def test_a_version_number_below_one_is_refused(client):
    r = client.get("/ui/optimizers/quad/versions/0")
    assert r.status_code == 422 and r.json()["error"]["code"] == "validation_error"


def _leaves(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        return {k: v for key, sub in value.items() for k, v in _leaves(sub, f"{prefix}{key}.").items()}
    return {prefix[:-1]: value}


def test_the_job_form_has_a_field_holding_each_default_of_the_spec(client):
    html = client.get("/ui/jobs/new").text
    found = Elements(html).found
    fields = {e["name"]: e for tag in ("input", "select", "textarea") for e in found.get(tag, []) if e.get("name")}
    defaults = _leaves(JobSpec(name="x").model_dump(mode="json"))
    defaults.pop("name")
    family = defaults.pop("family.name")
    family_params = {k: defaults.pop(k) for k in [k for k in defaults if k.startswith("family.params.")]}
    baselines = defaults.pop("evaluation.baselines")
    lr_grid = defaults.pop("evaluation.lr_grid")
    for name, default in defaults.items():
        assert name in fields, f"the form has no field for {name}"
        if fields[name].get("type") == "number":
            expected = "" if default is None else str(default)
            assert fields[name].get("value") == expected, (name, fields[name].get("value"), default)
    assert "name" in fields and "family.name" in fields and "family.params" in fields
    assert f'<option value="{family}" selected>' in html
    for key, value in family_params.items():
        assert f'"{key.rsplit(".", 1)[1]}": {value}' in html  # in the params textarea
    checked = [e["value"] for e in found["input"] if e.get("name") == "evaluation.baselines" and "checked" in e]
    assert checked == baselines
    assert [float(x) for x in fields["evaluation.lr_grid"]["value"].split(",")] == pytest.approx(lr_grid)
