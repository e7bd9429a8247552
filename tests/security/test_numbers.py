"""Numbers are bounded where they enter: a step number is 64-bit at most, a version number the database's
32-bit INTEGER; anything larger (up to thousands of digits) is a 422 naming the limit, never a 500, and
what one request sends never fails another key's step, however the server batches them."""

from __future__ import annotations

import asyncio
import json

import httpx

from service.app import create_app
from service.registry import keys
from tests.live_server import ServerThread
from tests.record import record
from tests.security.conftest import SHAPES, ST_TYPE, bearer, grads, grads_body, make_settings
from tests.security.test_malformed import DATA, grads_header, raw

HUGE = "9" * 5000          # past Python's 4,300-digit int conversion limit
JUST_OVER = str(2**63)     # one past the largest signed 64-bit integer
# Sessions with room for a body that long: a step body is refused unread (413) when it is longer than any
# of its session's gradients could make, and these tests are about what is read.
ROOMY = {**SHAPES, "pad": [4000]}


def roomy_session(client, headers) -> str:
    r = client.post("/v1/sessions", json={"optimizer": "opt:1", "shapes": ROOMY}, headers=headers)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def json_step(step: str) -> bytes:
    """A JSON step body with `step` written verbatim (json.dumps cannot write a 5,000-digit number)."""
    tensors = {n: t.tolist() for n, t in grads(0).items()}
    return b'{"step":' + step.encode() + b',"grads":' + json.dumps(tensors).encode() + b"}"


def test_step_numbers_over_64_bits_are_a_422_in_either_format(client, optimizer, optimize_headers):
    session_id = roomy_session(client, optimize_headers)
    url = f"/v1/sessions/{session_id}/step"
    for step in (HUGE, JUST_OVER):
        r = client.post(url, content=json_step(step), headers={**optimize_headers, "Content-Type": "application/json"})
        assert r.status_code == 422, (step[:20], r.text)
        assert "64-bit" in r.json()["error"]["message"]
        r = client.post(url, content=raw(grads_header(meta={"step": step}), DATA), headers={**optimize_headers,
                                                                                           **ST_TYPE})
        assert r.status_code == 422, (step[:20], r.text)
        assert "64-bit" in r.json()["error"]["message"]
    # The largest 64-bit step is a valid number, merely not the next one.
    r = client.post(url, content=json_step(str(2**63 - 1)), headers={**optimize_headers,
                                                                      "Content-Type": "application/json"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "step_conflict", r.text
    assert client.get(f"/v1/sessions/{session_id}", headers=optimize_headers).json()["step"] == 0


def test_version_numbers_past_the_database_integer_are_a_422(client, optimizer, optimize_headers):
    for version in (HUGE, str(2**31), str(2**63)):
        r = client.post("/v1/sessions", json={"optimizer": f"opt:{version}", "shapes": SHAPES},
                        headers=optimize_headers)
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_reference", r.text
        r = client.get("/v1/optimizers/resolve", params={"ref": f"opt:{version}"}, headers=optimize_headers)
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_reference", r.text
        r = client.get(f"/v1/optimizers/opt/versions/{version}", headers=optimize_headers)
        assert r.status_code == 422, r.text
    assert client.get("/v1/sessions", headers=optimize_headers).json() == []
    record("numbers:versions", values=3, routes=3)


def test_a_state_whose_version_has_thousands_of_digits_is_refused(client, session_id, optimize_headers):
    state = client.get(f"/v1/sessions/{session_id}/state", headers=optimize_headers).content
    n = int.from_bytes(state[:8], "little")
    header = json.loads(state[8:8 + n])
    for field, value in (("version", HUGE), ("step", HUGE)):
        forged = raw({**header, "__metadata__": {**header["__metadata__"], field: value}}, state[8 + n:])
        r = client.post("/v1/sessions/resume", content=forged, headers={**optimize_headers, **ST_TYPE})
        assert r.status_code in (400, 422), (field, r.text)
    assert len(client.get("/v1/sessions", headers=optimize_headers).json()) == 1


def test_huge_step_numbers_from_one_key_never_fail_another_keys_steps(tmp_path, sqlite_migrated, ckpt):
    """Key A steps four sessions while key B floods the same server with steps numbered past 64 bits (both
    formats): every one of A's steps is applied, every one of B's is a 422."""
    app = create_app(make_settings(tmp_path, sqlite_migrated))
    with ServerThread(app) as url:
        with app.state.db.session() as s:
            _, admin = keys.create_key(s, "admin", ["admin"])
            _, alice = keys.create_key(s, "alice", ["optimize"])
            _, mallory = keys.create_key(s, "mallory", ["optimize"])
            s.commit()
        httpx.post(f"{url}/v1/optimizers/opt/versions", content=ckpt,
                   headers={**bearer(admin), "Content-Type": "application/octet-stream"}).raise_for_status()

        async def run() -> tuple[list[int], list[int]]:
            async with httpx.AsyncClient(base_url=url, timeout=60) as http:
                async def open_session(key: str) -> str:
                    r = await http.post("/v1/sessions", json={"optimizer": "opt:1", "shapes": SHAPES},
                                        headers=bearer(key))
                    return r.json()["id"]

                mine = [await open_session(alice) for _ in range(4)]
                r = await http.post("/v1/sessions", json={"optimizer": "opt:1", "shapes": ROOMY},
                                    headers=bearer(mallory))
                theirs = r.json()["id"]

                async def alice_steps(sid: str) -> list[int]:
                    return [(await http.post(f"/v1/sessions/{sid}/step", content=grads_body(i),
                                             headers={**bearer(alice), **ST_TYPE})).status_code for i in range(25)]

                async def mallory_step(i: int) -> int:
                    body, kind = ((raw(grads_header(meta={"step": HUGE}), DATA), ST_TYPE) if i % 2 else
                                  (json_step(HUGE), {"Content-Type": "application/json"}))
                    return (await http.post(f"/v1/sessions/{theirs}/step", content=body,
                                            headers={**bearer(mallory), **kind})).status_code

                results = await asyncio.gather(*(alice_steps(sid) for sid in mine),
                                               *(mallory_step(i) for i in range(100)))
                return [s for r in results[:4] for s in r], list(results[4:])

        good, bad = asyncio.run(run())
    assert good == [200] * 100, sorted(set(good))
    assert bad == [422] * 100, sorted(set(bad))
    record("numbers:concurrent", other_key_steps=len(good), other_key_ok=good.count(200), huge_steps=len(bad),
           huge_422=bad.count(422))
