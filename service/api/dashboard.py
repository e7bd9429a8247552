"""The dashboard: server-rendered page shells at `/` and `/ui/...`, filled in by their own JavaScript.

    GET /                                   -> /ui/optimizers
    GET /ui/login                           enter an API key (kept in the browser's localStorage)
    GET /ui/optimizers                      every registered optimizer
    GET /ui/optimizers/{name}               its versions and aliases; pick two to compare
    GET /ui/optimizers/{name}/versions/{n}  config, lineage, evaluation plot and final-loss table
    GET /ui/compare?a=REF&b=REF             two versions' evaluations on one plot
    GET /ui/jobs                            meta-training jobs with state and progress
    GET /ui/jobs/new                        the job form, every field holding the spec's default
    GET /ui/jobs/{id}                       one job's curves, drawn live from its event stream; cancel
    GET /ui/sessions                        the caller's live sessions
    GET /ui/static/...                      the pages' scripts and styles, and the vendored uPlot

The shells hold no data and need no key: each page's script reads the key from localStorage and sends it
as `Authorization: Bearer` on fetch() calls to the JSON API (the event stream too, read with fetch, since
EventSource cannot send headers). So a key never appears in a URL, a page or a server log, and the pages
see exactly what the API lets that key see.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

import service
from service.api.schemas import MAX_DB_INT, DbId
from service.jobs.spec import JobSpec
from service.lopt.config import ARCHITECTURES, PREPROCESS_KINDS
from service.metatrain import BASELINES
from service.metatrain.settings import META_LOSSES, META_LR_SCHEDULES
from service.tasks import FAMILIES, make_family

HERE = Path(__file__).resolve().parent
templates = Jinja2Templates(directory=HERE / "templates")

# The shells load scripts and styles from this origin only and never inline any, so an injected string
# cannot run; the API they call is the same origin too.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)
router.mount("/ui/static", StaticFiles(directory=HERE / "static"), name="dashboard-static")

NAV = [("optimizers", "Optimizers", "/ui/optimizers"), ("jobs", "Jobs", "/ui/jobs"),
       ("sessions", "Sessions", "/ui/sessions")]


def shell(request: Request, template: str, *, page: str, title: str, section: str | None = None,
          **context: Any) -> HTMLResponse:
    """A page shell: `page` names its script (static/js/pages/<page>.js); `params`, if given, are handed to
    that script as JSON."""
    return templates.TemplateResponse(request, template, {
        "page": page, "title": title, "section": section, "nav": NAV, "asset_version": service.__version__,
        **context}, headers=SECURITY_HEADERS)


@router.get("/")
@router.get("/ui")
@router.get("/ui/")
def home() -> RedirectResponse:
    return RedirectResponse("/ui/optimizers", status_code=307)


@router.get("/ui/login")
def login(request: Request) -> HTMLResponse:
    return shell(request, "login.html", page="login", title="Sign in")


@router.get("/ui/optimizers")
def optimizers(request: Request) -> HTMLResponse:
    return shell(request, "optimizers.html", page="optimizers", title="Optimizers", section="optimizers")


@router.get("/ui/optimizers/{name}")
def optimizer(request: Request, name: str) -> HTMLResponse:
    return shell(request, "optimizer.html", page="optimizer", title=name, section="optimizers",
                params={"name": name})


@router.get("/ui/optimizers/{name}/versions/{version}")
def version(request: Request, name: str, version: Annotated[DbId, PathParam(ge=1, le=MAX_DB_INT)]) -> HTMLResponse:
    return shell(request, "version.html", page="version", title=f"{name}:{version}", section="optimizers",
                params={"name": name, "version": version})


@router.get("/ui/compare")
def compare(request: Request, a: Annotated[str, Query(max_length=200)],
            b: Annotated[str, Query(max_length=200)]) -> HTMLResponse:
    return shell(request, "compare.html", page="compare", title=f"{a} vs {b}", section="optimizers",
                params={"a": a, "b": b})


@router.get("/ui/jobs")
def jobs(request: Request) -> HTMLResponse:
    return shell(request, "jobs.html", page="jobs", title="Jobs", section="jobs")


# The new-job form's selects offer what a job spec accepts, from the same constants.
CHOICES = {"architecture": ARCHITECTURES, "preprocess": PREPROCESS_KINDS, "meta_lr_schedule": META_LR_SCHEDULES,
           "meta_loss": META_LOSSES}


@router.get("/ui/jobs/new")
def new_job(request: Request) -> HTMLResponse:
    return shell(request, "job_new.html", page="job_new", title="New meta-training job", section="jobs",
                spec=job_defaults(), baselines=list(BASELINES), family_defaults=family_defaults(), choices=CHOICES)


@router.get("/ui/jobs/{job_id}")
def job(request: Request, job_id: str) -> HTMLResponse:
    return shell(request, "job.html", page="job", title=f"Job {job_id[:8]}", section="jobs",
                params={"id": job_id})


@router.get("/ui/sessions")
def sessions(request: Request) -> HTMLResponse:
    return shell(request, "sessions.html", page="sessions", title="Sessions", section="sessions")


@functools.cache
def job_defaults() -> dict[str, Any]:
    """The job spec with every default filled in, as the form shows it (the name has none)."""
    return JobSpec(name="unnamed").model_dump(mode="json") | {"name": ""}


@functools.cache
def family_defaults() -> dict[str, dict[str, Any]]:
    """Each task family's parameters at their defaults: the form swaps them in when the family changes."""
    return {name: make_family(name).params() for name in sorted(FAMILIES)}
