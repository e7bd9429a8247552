"""Job event streams are long-lived and each polls the database, so they are capped: per API key (429
naming L2O_EVENTS_MAX_PER_KEY) and in all (L2O_EVENTS_MAX_TOTAL); a slot is given back when its stream
ends, and a stream whose job does not change ends after L2O_EVENTS_IDLE_TIMEOUT_S."""

from __future__ import annotations

import contextlib
import time

import httpx
import pytest

from service.app import create_app
from service.registry import keys
from tests.jobs.conftest import tiny_spec
from tests.live_server import ServerThread
from tests.record import record
from tests.security.conftest import bearer, make_settings

PER_KEY, TOTAL, IDLE_S = 2, 3, 1.0


@pytest.fixture
def live(tmp_path, sqlite_migrated):
    app = create_app(make_settings(tmp_path, sqlite_migrated, events_max_per_key=PER_KEY, events_max_total=TOTAL,
                                   events_idle_timeout_s=IDLE_S, job_poll_s=0.05))
    with ServerThread(app) as url:
        with app.state.db.session() as s:
            made = [keys.create_key(s, name, ["train"])[1] for name in ("alice", "bob", "carol")]
            s.commit()
        with httpx.Client(base_url=url, timeout=10) as http:
            jobs = [http.post("/v1/jobs", json=tiny_spec(f"j{i}"), headers=bearer(k)).json()["id"]
                    for i, k in enumerate(made)]
            yield http, made, jobs, app


def open_stream(stack: contextlib.ExitStack, http: httpx.Client, key: str, job_id: str) -> httpx.Response:
    """A stream, open; its first event read when it was accepted."""
    response = stack.enter_context(http.stream("GET", f"/v1/jobs/{job_id}/events", headers=bearer(key)))
    if response.status_code == 200:
        lines = response.iter_lines()
        assert next(lines).startswith("event: progress")
        response.lines = lines   # type: ignore[attr-defined]
    else:
        response.read()
    return response


def test_streams_are_capped_per_key_and_in_all_and_slots_come_back(live):
    http, (alice, bob, carol), (a_job, b_job, c_job), app = live
    with contextlib.ExitStack() as stack:
        first = [open_stream(stack, http, alice, a_job) for _ in range(PER_KEY)]
        assert [r.status_code for r in first] == [200] * PER_KEY
        over = open_stream(stack, http, alice, a_job)
        assert over.status_code == 429 and over.json()["error"]["code"] == "rate_limited", over.text
        assert "L2O_EVENTS_MAX_PER_KEY" in over.json()["error"]["message"] and over.headers["retry-after"]
        # Another key is not refused for alice's streams, up to the server's total.
        assert open_stream(stack, http, bob, b_job).status_code == 200
        full = open_stream(stack, http, carol, c_job)
        assert full.status_code == 429 and "L2O_EVENTS_MAX_TOTAL" in full.json()["error"]["message"], full.text
        # Other requests are served meanwhile.
        assert http.get("/v1/optimizers", headers=bearer(carol)).status_code == 200
        first[0].close()
        deadline = time.monotonic() + 10
        while app.state.event_streams.total > TOTAL - 1 and time.monotonic() < deadline:
            time.sleep(0.02)   # the server notices the hang-up at its next poll
        assert open_stream(stack, http, carol, c_job).status_code == 200
    record("streams:cap", per_key=PER_KEY, total=TOTAL)


def test_a_stream_whose_job_does_not_change_ends_after_the_idle_timeout(live):
    http, (alice, *_), (a_job, *_), app = live
    began = time.monotonic()
    with contextlib.ExitStack() as stack:
        stream = open_stream(stack, http, alice, a_job)
        rest = list(stream.lines)   # returns once the server ends the stream
    took = time.monotonic() - began
    assert not any(line.startswith("event: end") for line in rest)
    assert IDLE_S <= took < IDLE_S + 5, took
    assert app.state.event_streams.total == 0
    record("streams:idle", idle_timeout_s=IDLE_S, ended_after_s=took)
