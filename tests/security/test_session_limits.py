"""Sessions are priced before they are paid for: parameter names, their bytes and the shapes' dimensions
are limited and counted with the state; the state's bytes follow from the version's config (whatever its
architecture) and are checked against each key's quota and the server's room before anything is
allocated; and the list of a key's sessions comes a page at a time."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.lopt import OptimizerConfig
from service.sessions.record import PARAMETER_OVERHEAD_BYTES
from tests.conftest import checkpoint_bytes
from tests.record import record
from tests.security.conftest import OCTET_TYPE, bearer, make_settings


@pytest.fixture
def make_client(tmp_path, sqlite_migrated, make_key_for):
    made = []

    def make(**limits) -> tuple[TestClient, dict, dict]:
        (tmp_path / str(len(made))).mkdir()
        app = create_app(make_settings(tmp_path / str(len(made)), sqlite_migrated, step_max_body_bytes=2**22,
                                       **limits))
        client = TestClient(app).__enter__()
        made.append(client)
        admin, alice, bob = (bearer(make_key_for(app, *s)) for s in (["admin"], ["optimize"], ["optimize"]))
        r = client.post("/v1/optimizers/opt/versions", content=checkpoint_bytes(seed=3, hidden_size=16),
                        headers={**admin, **OCTET_TYPE})
        assert r.status_code == 201, r.text
        return client, alice, bob

    yield make
    for client in made:
        client.__exit__(None, None, None)


@pytest.fixture
def make_key_for():
    from service.registry import keys

    def make(app, *scopes: str) -> str:
        with app.state.db.session() as s:
            _, key = keys.create_key(s, "k", scopes)
            s.commit()
        return key

    return make


def create(client, headers, shapes, optimizer="opt:1"):
    return client.post("/v1/sessions", json={"optimizer": optimizer, "shapes": shapes}, headers=headers)


def refused(response, status: int, code: str, setting: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and setting in error["message"], error


def test_names_their_bytes_and_shape_entries_are_limited(make_client):
    client, alice, _ = make_client(session_max_parameters=50, session_max_name_bytes=2000,
                                   session_max_shape_entries=100)
    refused(create(client, alice, {f"p{i}": [1] for i in range(51)}), 422, "session_too_large",
            "L2O_SESSION_MAX_PARAMETERS")
    refused(create(client, alice, {"n" * 500 + str(i): [1] for i in range(5)}), 422, "session_too_large",
            "L2O_SESSION_MAX_NAME_BYTES")
    refused(create(client, alice, {"a": [1] * 16, **{f"b{i}": [1] * 10 for i in range(9)}}), 422,
            "session_too_large", "L2O_SESSION_MAX_SHAPE_ENTRIES")
    assert client.get("/v1/sessions", headers=alice).json() == []


def test_names_and_shapes_count_with_the_state_against_each_keys_quota(make_client):
    """Sessions of many long names and empty shapes: little state, much else. The quota counts it all."""
    shapes = {"w": [1], **{f"{'x' * 100}{i}": [0] for i in range(40)}}
    state = 1 * OptimizerConfig(hidden_size=16, num_layers=1).state_floats_per_coord * 4
    names = sum(len(n.encode()) + 8 * len(s) + PARAMETER_OVERHEAD_BYTES for n, s in shapes.items())
    held = state + names
    assert names > 10 * state
    client, alice, bob = make_client(session_max_bytes_per_key=3 * held)
    for _ in range(3):
        r = create(client, alice, shapes)
        assert r.status_code == 201, r.text
        assert r.json()["state_bytes"] == state and r.json()["held_bytes"] == held
    refused(create(client, alice, shapes), 429, "too_many_sessions", "L2O_SESSION_MAX_BYTES_PER_KEY")
    assert create(client, bob, shapes).status_code == 201   # a quota per key
    record("sessions:quota", held_bytes=held, state_bytes=state, quota=3 * held)


def test_state_bytes_come_from_the_config_and_are_checked_before_anything_is_allocated(make_client, monkeypatch):
    """A config whose architecture keeps another number of floats per coordinate is priced by that number;
    a session over the server's room is refused without its state ever being allocated."""
    client, alice, _ = make_client(session_max_state_bytes=10**6, session_max_coords=10**7)
    allocated: list[int] = []
    real_init = __import__("service.lopt", fromlist=["init"]).init

    def counting_init(config, n_coords, **kw):
        allocated.append(n_coords)
        return real_init(config, n_coords, **kw)

    monkeypatch.setattr("service.sessions.service.lopt.init", counting_init)
    monkeypatch.setattr(OptimizerConfig, "state_floats_per_coord", property(lambda self: 1000))
    r = create(client, alice, {"w": [2000]})
    refused(r, 503, "at_capacity", "L2O_SESSION_MAX_STATE_BYTES")
    assert r.json()["error"]["detail"]["requested"] == 2000 * 1000 * 4 + len(b"w") + 8 + PARAMETER_OVERHEAD_BYTES
    assert allocated == []
    r = create(client, alice, {"w": [100]})
    assert r.status_code == 201 and allocated == [100], r.text
    record("sessions:priced", requested=2000 * 1000 * 4, allocated_before_refusal=0)


def test_the_list_comes_a_page_at_a_time(make_client):
    client, alice, bob = make_client(session_max_per_key=16)
    made = [create(client, alice, {"w": [2]}).json()["id"] for _ in range(5)]
    create(client, bob, {"w": [2]})
    seen, url, pages = [], "/v1/sessions?limit=2", 0
    while url:
        r = client.get(url, headers=alice)
        assert r.status_code == 200 and len(r.json()) <= 2, r.text
        seen += [s["id"] for s in r.json()]
        url = r.links.get("next", {}).get("url")
        pages += 1
    assert seen == made and pages == 3
    for bad in ("x", "1~s_x\n", "1e400~s_x", "-1~s_x", "1~" + "s" * 100):
        assert client.get("/v1/sessions", params={"after": bad}, headers=alice).status_code == 422, bad
    assert client.get("/v1/sessions", params={"limit": 1000}, headers=alice).status_code == 422
