"""Every route fuzzed from the app's own OpenAPI document with schemathesis, over real HTTP, with a valid
admin key: valid and invalid inputs alike must never get a 5xx, and every answer must match the schema
(status, content type, headers, body). Derandomized, so a run is reproducible; ~40 cases per operation,
more than 1,000 in all, in well under a minute."""

from __future__ import annotations

import os
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
from service.sessions import wire
from tests.conftest import checkpoint_bytes
from tests.jobs.conftest import tiny_spec
from tests.live_server import ServerThread
from tests.security.conftest import OCTET_TYPE, SHAPES, ST_TYPE, HeldExecutor, bearer, grads_body, make_settings

pytestmark = pytest.mark.slow

EXAMPLES_PER_OPERATION = int(os.environ.get("L2O_FUZZ_EXAMPLES", "30"))
MIN_CASES = 1000
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]



@schemathesis.serializer(wire.SAFETENSORS_TYPE)
def safetensors_body(ctx, value):
    """Steps and states go as raw bytes, whatever the fuzzer makes of them."""
    return {"data": serialize_binary(value)}


schema = schemathesis.openapi.from_dict(create_app(Settings(database_url="sqlite://")).openapi())
OPERATIONS = sum(1 for _ in schema.get_all_operations())
sent: Counter[str] = Counter()


class World:
    """The server being fuzzed and what it holds: an optimizer with a version and an alias, a session
    that has stepped, a queued job, and the admin key that owns them."""

    def __init__(self, url: str, admin_key: str, admin_key_id: int) -> None:
        self.url, self.admin_key, self.admin_key_id = url, admin_key, admin_key_id


@pytest.fixture(scope="module")
def world(tmp_path_factory, sqlite_migrated):
    import httpx

    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setattr("service.api.jobs.make_executor", lambda settings, db: HeldExecutor())
    app = create_app(make_settings(tmp_path_factory.mktemp("fuzz"), sqlite_migrated))
    try:
        with ServerThread(app) as url:
            with app.state.db.session() as s:
                row, key = keys.create_key(s, "fuzzer", ["optimize", "train", "admin"])
                s.commit()
            with httpx.Client(base_url=url, headers=bearer(key), timeout=30) as http:
                assert http.post("/v1/optimizers/opt/versions", content=checkpoint_bytes(seed=3),
                                 headers=OCTET_TYPE).status_code == 201
                assert http.put("/v1/optimizers/opt/aliases/prod", json={"version": 1}).status_code == 200
                sid = http.post("/v1/sessions", json={"optimizer": "opt@prod", "shapes": SHAPES}).json()["id"]
                assert http.post(f"/v1/sessions/{sid}/step", content=grads_body(0), headers=ST_TYPE).status_code == 200
                assert http.post("/v1/jobs", json=tiny_spec("fuzzed")).status_code == 201
            yield World(url, key, row.id)
    finally:
        monkeypatch.undo()


@schema.parametrize()
@settings(max_examples=EXAMPLES_PER_OPERATION, derandomize=True, deadline=None, database=None,
          phases=[Phase.explicit, Phase.generate],
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
def test_no_input_gets_a_5xx_or_an_answer_off_schema(case, world):
    if case.path_parameters and case.path_parameters.get("key_id") == world.admin_key_id:
        case.path_parameters["key_id"] = world.admin_key_id + 10**6  # revoking our own key would end the fuzz
    sent[f"{case.method} {case.path}"] += 1
    case.call_and_validate(base_url=world.url, headers=bearer(world.admin_key), checks=CHECKS)


def test_the_fuzz_sent_over_a_thousand_cases_to_every_operation():
    if len(sent) < OPERATIONS:
        pytest.skip("the fuzz did not run over every operation in this session (a subset was selected)")
    assert sum(sent.values()) >= MIN_CASES, dict(sent)
