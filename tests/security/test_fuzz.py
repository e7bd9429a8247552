"""Every route fuzzed from the app's own OpenAPI document with schemathesis, over real HTTP, with a valid
admin key: valid and invalid inputs alike must never get a 5xx or a dropped connection, and every answer
must match the schema (status, content type, headers, body). A quarter of the cases (chosen by their
generated values) are spiced: a path or query value, or a value in the JSON body, becomes a huge integer
(2^63, 10^4000) or a name with a control character. Derandomized, so a run is reproducible.

L2O_FUZZ_EXAMPLES sets the examples per operation: 30 here and in CI (~1,400 cases, about a minute);
`python -m bench.reliability` runs 80 (over 2,000 cases)."""

from __future__ import annotations

import os
import zlib
from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.transport.serialization import serialize_binary

from service.app import create_app
from service.config import Settings
from service.registry import keys
from service.registry.models import ApiKey, utcnow
from service.sessions import wire
from tests.conftest import checkpoint_bytes
from tests.jobs.conftest import tiny_spec
from tests.live_server import ServerThread
from tests.record import record
from tests.security.conftest import OCTET_TYPE, SHAPES, ST_TYPE, HeldExecutor, bearer, grads_body, make_settings

pytestmark = pytest.mark.slow

EXAMPLES_PER_OPERATION = int(os.environ.get("L2O_FUZZ_EXAMPLES", "30"))
# Each operation gets fewer cases than asked when its inputs are few, so the floor is the 2,000 cases
# for the report's run (80 per operation), 40 per example asked below that.
MIN_CASES = min(40 * EXAMPLES_PER_OPERATION, 2_000)
# Values no well-formed request holds: numbers past 64 bits (and past Python's 4,300-digit int parsing) and
# names with control characters.
SPICES = [str(2**63), "9" * 5000, str(-(2**63) - 1), "x\n", "x\r\n", "x\x00", "x\t", "\u2028x", "opt\n", "prod\r"]
JSON_SPICES = [2**63, 10**4000, -(2**63) - 1, "x\n", "x\r\n", "x\x00", "\u2028", "opt:1\n"]
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]



@schemathesis.serializer(wire.SAFETENSORS_TYPE)
def safetensors_body(ctx, value):
    """Steps and states go as raw bytes, whatever the fuzzer makes of them."""
    return {"data": serialize_binary(value)}


schema = schemathesis.openapi.from_dict(create_app(Settings(database_url="sqlite://")).openapi())
OPERATIONS = sum(1 for _ in schema.get_all_operations())
sent: Counter[str] = Counter()
answers: Counter[int] = Counter()
spiced: Counter[str] = Counter()
dropped: list[str] = []


def spice(case) -> None:
    """For a quarter of the cases (by a hash of their generated values, so runs repeat), put a huge integer or
    a control character into one path value, query value or JSON body value."""
    pick = zlib.crc32(repr((case.path_parameters, case.query, case.body)).encode())
    if pick % 4:
        return
    where = [("path", k) for k in (case.path_parameters or {})] + [("query", k) for k in (case.query or {})]
    if isinstance(case.body, dict) and case.body:
        where += [("body", k) for k in case.body]
    if not where:
        return
    kind, key = where[(pick >> 2) % len(where)]
    if kind == "body":
        case.body[key] = JSON_SPICES[(pick >> 8) % len(JSON_SPICES)]
    else:
        (case.path_parameters if kind == "path" else case.query)[key] = SPICES[(pick >> 8) % len(SPICES)]
    spiced[kind] += 1


class World:
    """The server being fuzzed and what it holds: an optimizer with a version and an alias, a session
    that has stepped, a queued job, and the admin key that owns them."""

    def __init__(self, url: str, admin_key: str, admin_key_id: int, session_id: str, job_id: str) -> None:
        self.url, self.admin_key, self.admin_key_id = url, admin_key, admin_key_id
        # Path values that exist, so that part of the fuzz reaches past the lookups: random bodies on a live
        # session's step, aliases and deletes on a version in use, cancels of a real job.
        self.real = {"session_id": session_id, "job_id": job_id, "name": "opt", "version": 1, "alias": "prod"}

    def aim(self, case) -> None:
        """Point half the cases (chosen by their generated values, so runs repeat) at things that exist."""
        params = case.path_parameters or {}
        if case.method == "DELETE" and "session_id" in params:
            return  # the live session must outlive the fuzz
        for name, value in params.items():
            if name in self.real and zlib.crc32(repr(value).encode()) % 2 == 0:
                params[name] = self.real[name]


@pytest.fixture(scope="module")
def world(tmp_path_factory, sqlite_migrated):
    import httpx

    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setattr("service.jobs.lifespan.make_executor", lambda settings, db: HeldExecutor())
    # Limits small enough that valid-looking sessions cost the fuzz little memory (each is still enforced).
    app = create_app(make_settings(tmp_path_factory.mktemp("fuzz"), sqlite_migrated, session_max_coords=10_000,
                                   session_max_per_key=64))
    try:
        with ServerThread(app) as url:
            with app.state.db.session() as s:
                # An id far from the small numbers the fuzzer tries first, so the few DELETE /v1/keys/{id} it
                # aims at the fuzzer's own key are the only ones to steer away.
                s.add(ApiKey(id=7_777_776, name="placeholder", prefix="l2o_placehol", key_hash="0" * 64,
                             scopes=["optimize"], revoked_at=utcnow()))
                s.flush()
                row, key = keys.create_key(s, "fuzzer", ["optimize", "train", "admin"])
                s.commit()
            with httpx.Client(base_url=url, headers=bearer(key), timeout=30) as http:
                assert http.post("/v1/optimizers/opt/versions", content=checkpoint_bytes(seed=3),
                                 headers=OCTET_TYPE).status_code == 201
                assert http.put("/v1/optimizers/opt/aliases/prod", json={"version": 1}).status_code == 200
                sid = http.post("/v1/sessions", json={"optimizer": "opt@prod", "shapes": SHAPES}).json()["id"]
                assert http.post(f"/v1/sessions/{sid}/step", content=grads_body(0), headers=ST_TYPE).status_code == 200
                job = http.post("/v1/jobs", json=tiny_spec("fuzzed"))
                assert job.status_code == 201
            yield World(url, key, row.id, sid, job.json()["id"])
    finally:
        monkeypatch.undo()


def names_the_admin_key(value, admin_key_id: int) -> bool:
    try:
        return int(str(value).strip()) == admin_key_id
    except ValueError:
        return False


@schema.parametrize()
@settings(max_examples=EXAMPLES_PER_OPERATION, derandomize=True, deadline=None, database=None,
          phases=[Phase.explicit, Phase.generate],
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
def test_no_input_gets_a_5xx_or_an_answer_off_schema(case, world):
    world.aim(case)
    spice(case)
    if case.path_parameters and names_the_admin_key(case.path_parameters.get("key_id"), world.admin_key_id):
        case.path_parameters["key_id"] = world.admin_key_id + 1  # revoking our own key would end the fuzz
    # The schema's security scheme makes schemathesis invent Authorization headers of its own; the fuzz is
    # of what a valid key can reach (tests/api/test_auth.py and test_keys.py cover bad keys), so ours wins.
    case.headers = {**(case.headers or {}), **bearer(world.admin_key)}
    sent[f"{case.method} {case.path}"] += 1
    try:
        response = case.call_and_validate(base_url=world.url, checks=CHECKS)
    except Exception as exc:
        if "Connection" in type(exc).__name__ or "connection" in str(exc).lower()[:200]:
            dropped.append(f"{case.method} {case.path}: {type(exc).__name__}")
        raise
    answers[response.status_code] += 1


def test_the_fuzz_reached_every_operation_with_enough_cases():
    if not sent:
        pytest.skip("the fuzz itself was not selected in this run")
    # Run at all, it must have run whole: a fuzz that missed operations is a failure, not a skip.
    assert len(sent) >= OPERATIONS, f"the fuzz reached {len(sent)} of {OPERATIONS} operations"
    assert sum(sent.values()) >= MIN_CASES, dict(sent)
    assert sum(spiced.values()) >= sum(sent.values()) // 8, dict(spiced)
    server_errors = sum(n for status, n in answers.items() if status >= 500)
    assert server_errors == 0 and dropped == [], (dict(answers), dropped)
    record("fuzz", cases=sum(sent.values()), operations=OPERATIONS, method_path_pairs=len(sent),
           by_operation=dict(sent), statuses=dict(sorted(answers.items())), spiced=dict(spiced),
           server_errors=server_errors, dropped=len(dropped), examples_per_operation=EXAMPLES_PER_OPERATION)
