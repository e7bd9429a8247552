"""Malformed safetensors and checkpoints, sent over HTTP to every route that reads them: the step, the
session resume and the checkpoint upload. Each gets a clear 4xx naming the problem, nothing is stored or
changed, and no request makes the server allocate anywhere near what a lying header claims: measured as
the current resident memory of a real `l2o serve` process, sampled while the bodies arrive (never a
high-water mark, which remembers what came before, nor tracemalloc, which does not see torch)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import httpx
import pytest
import torch

from service.lopt import Checkpoint, OptimizerConfig
from service.lopt.checkpoint import serialize_safetensors
from service.sessions import wire
from tests.conftest import checkpoint_bytes
from tests.faults.conftest import pretrained, server_factory  # noqa: F401  (fixtures: a real `l2o serve`)
from tests.record import record
from tests.security.conftest import OCTET_TYPE, SHAPES, ST_TYPE, grads_body

F32 = 4
W_BYTES, B_BYTES = 6 * F32, 3 * F32  # layer.weight [3, 2] and layer.bias [3], float32


def raw(header: dict | bytes, data: bytes = b"", n: int | None = None) -> bytes:
    """A safetensors body built by hand, so every field can lie."""
    head = header if isinstance(header, bytes) else json.dumps(header).encode()
    return (len(head) if n is None else n).to_bytes(8, "little") + head + data


def grads_header(weight: dict | None = None, bias: dict | None = None, meta: dict | None = None) -> dict:
    header = {"__metadata__": {"step": "1"} if meta is None else meta,
              "layer.weight": {"dtype": "F32", "shape": [3, 2], "data_offsets": [0, W_BYTES]},
              "layer.bias": {"dtype": "F32", "shape": [3], "data_offsets": [W_BYTES, W_BYTES + B_BYTES]}}
    header["layer.weight"].update(weight or {})
    header["layer.bias"].update(bias or {})
    return header


DATA = bytes(W_BYTES + B_BYTES)
TERA = 2**40

# name -> (body, status, code, a fragment of the message). Bodies are small; what they claim is not.
MALFORMED = {
    "shorter than the length field": (b"\x05\x00", 400, "malformed_body", "shorter than its 8-byte header"),
    "header length beyond the body": (raw(grads_header(), DATA, n=10_000), 400, "malformed_body", "truncated"),
    "header length of 2^63": (raw(grads_header(), DATA, n=2**63 - 1), 400, "malformed_body", "cap"),
    "header length of 1 TiB": (raw(grads_header(), DATA, n=TERA), 400, "malformed_body", "cap"),
    "header not JSON": (raw(b"{\"layer.weight\": [", DATA), 400, "malformed_body", "not valid JSON"),
    "header a list": (raw(b"[1, 2, 3]", DATA), 400, "malformed_body", "not a JSON object"),
    "deeply nested header": (raw(b"[" * 20_000 + b"]" * 20_000), 400, "malformed_body", "JSON"),
    "duplicate tensor names": (
        raw(b'{"layer.bias": {"dtype": "F32", "shape": [3], "data_offsets": [0, 12]}, '
            b'"layer.bias": {"dtype": "F32", "shape": [3], "data_offsets": [0, 12]}}', bytes(12)),
        400, "malformed_body", "duplicate"),
    "overlapping offsets": (raw(grads_header(bias={"data_offsets": [16, 28]}), bytes(28)), 400, "malformed_body",
                            "overlaps"),
    "offsets past the data": (raw(grads_header(bias={"data_offsets": [W_BYTES, TERA]}), DATA), 400,
                              "malformed_body", "past the"),
    "offsets reversed": (raw(grads_header(bias={"data_offsets": [36, 24]}), DATA), 400, "malformed_body",
                         "invalid data_offsets"),
    "a hole in the data": (raw(grads_header(bias={"data_offsets": [W_BYTES + 4, W_BYTES + 4 + B_BYTES]}),
                           DATA + bytes(4)), 400, "malformed_body", "hole"),
    "bytes after the last tensor": (raw(grads_header(), DATA + bytes(8)), 400, "malformed_body", "after its last"),
    "shape bigger than its bytes": (raw(grads_header(bias={"shape": [4]}), DATA), 400, "malformed_body",
                                    "needs 16 bytes"),
    "shape of 2^80 elements": (raw(grads_header(bias={"shape": [TERA, TERA]}), DATA), 400, "malformed_body",
                               "needs"),
    "negative dimension": (raw(grads_header(bias={"shape": [-3]}), DATA), 400, "malformed_body", "invalid shape"),
    "too many dimensions": (raw(grads_header(bias={"shape": [1] * 40}), DATA), 400, "malformed_body",
                            "invalid shape"),
    "integer dtype": (raw(grads_header(bias={"dtype": "I32"}), DATA), 422, "invalid_gradients", "non-float dtype"),
    "unknown dtype": (raw(grads_header(bias={"dtype": "F128"}), DATA), 422, "invalid_gradients", "unknown dtype"),
    "entry missing its offsets": (raw({"layer.bias": {"dtype": "F32", "shape": [3]}}, bytes(12)), 400,
                                  "malformed_body", "exactly dtype, shape and data_offsets"),
    "metadata not strings": (raw(grads_header(meta={"step": 1}), DATA), 400, "malformed_body", "strings"),
    "step missing": (raw(grads_header(meta={}), DATA), 400, "malformed_body", "step"),
    "step not a number": (raw(grads_header(meta={"step": "1e9"}), DATA), 400, "malformed_body", "step"),
}


def nan_body() -> bytes:
    body = bytearray(grads_body(1))
    body[-4:] = torch.tensor([float("nan")]).numpy().tobytes()
    return bytes(body)


# Well-formed safetensors the step must still refuse.
WRONG_GRADIENTS = {
    "a missing parameter": (raw({"__metadata__": {"step": "1"}, "layer.bias": {
        "dtype": "F32", "shape": [3], "data_offsets": [0, 12]}}, bytes(12)), 422, "invalid_gradients", "missing"),
    "a misshapen parameter": (raw(grads_header(weight={"shape": [2, 3]}), DATA), 422, "invalid_gradients",
                              "shape [2, 3]"),
    "a NaN": (nan_body(), 422, "invalid_gradients", "NaN"),
}


def check_refusal(response, status: int, code: str, fragment: str, what: str) -> None:
    assert response.status_code == status, (what, response.status_code, response.text)
    error = response.json()["error"]
    assert error["code"] == code and fragment in error["message"], (what, error)


def test_malformed_step_bodies_are_refused_and_leave_the_session_as_it_was(client, session_id, optimize_headers):
    headers = {**optimize_headers, **ST_TYPE}
    before = client.get(f"/v1/sessions/{session_id}/state", headers=optimize_headers).content
    most = wire.max_body_bytes({n: tuple(s) for n, s in SHAPES.items()}, wire.WireFormat.SAFETENSORS)
    for what, (body, status, code, fragment) in {**MALFORMED, **WRONG_GRADIENTS}.items():
        if len(body) > most:   # longer than any step of this session: refused unread, before its faults show
            status, code, fragment = 413, "payload_too_large", "session's shapes"
        check_refusal(client.post(f"/v1/sessions/{session_id}/step", content=body, headers=headers),
                      status, code, fragment, what)
    record("malformed:step", cases=len(MALFORMED) + len(WRONG_GRADIENTS))
    after = client.get(f"/v1/sessions/{session_id}/state", headers=optimize_headers).content
    assert after == before
    assert client.get(f"/v1/sessions/{session_id}", headers=optimize_headers).json()["step"] == 1
    # The session still works, from the step it had reached.
    assert client.post(f"/v1/sessions/{session_id}/step", content=grads_body(1), headers=headers).status_code == 200


def test_malformed_states_are_refused_and_open_no_session(client, session_id, optimize_headers):
    state = client.get(f"/v1/sessions/{session_id}/state", headers=optimize_headers).content
    header_len = int.from_bytes(state[:8], "little")
    header = json.loads(state[8:8 + header_len])
    data = state[8 + header_len:]

    def with_hc(**change) -> bytes:
        return raw({**header, "hc": {**header["hc"], **change}}, data)

    states = {**MALFORMED,
              "state tensor of the wrong dtype": (with_hc(dtype="I32"), 422, "invalid_gradients",
                                                  "non-float dtype 'I32'; accepted: F32, BF16, F16"),
              "state tensor of the wrong shape": (with_hc(shape=[1, 1, 1, len(data) // 4]), 409, "state_mismatch",
                                                  "shape"),
              "shapes metadata nested too deep": (raw({**header, "__metadata__": {**header["__metadata__"],
                                                                                  "shapes": "[" * 5000}}, data),
                                                  400, "malformed_body", "shapes"),
              "state of another version": (raw({**header, "__metadata__": {**header["__metadata__"],
                                                                           "digest": "0" * 64}}, data),
                                           409, "state_mismatch", "only on the version that made it")}
    for what, (body, status, code, fragment) in states.items():
        response = client.post("/v1/sessions/resume", content=body, headers={**optimize_headers, **ST_TYPE})
        # A state is read by the same checked reader as a step, but its metadata is checked first, so the
        # message may name another of the body's faults than the step's did.
        check_refusal(response, status, code, fragment if what not in MALFORMED else "", what)
    record("malformed:state", cases=len(states))
    assert [s["id"] for s in client.get("/v1/sessions", headers=optimize_headers).json()] == [session_id]


def bad_checkpoints() -> dict[str, tuple[bytes, int, str, str]]:
    good = checkpoint_bytes(seed=3)
    ckpt = Checkpoint.from_bytes(good)
    meta = {"format": "l2o-lstm/1", "config": json.dumps(ckpt.config.to_dict(), sort_keys=True)}

    def rebuilt(weights: dict[str, torch.Tensor], metadata: dict[str, str] = meta) -> bytes:
        return serialize_safetensors(weights, metadata)

    first = sorted(ckpt.weights)[0]
    header_len = int.from_bytes(good[:8], "little")
    return {
        **{what: (body, 422, "invalid_checkpoint", "") for what, (body, *_rest) in MALFORMED.items()},
        "empty body": (b"", 422, "invalid_checkpoint", "shorter than its 8-byte"),
        "truncated data": (good[:-7], 422, "invalid_checkpoint", "safetensors"),
        "header length beyond the body": (len(good).to_bytes(8, "little") + good[8:], 422, "invalid_checkpoint",
                                          "exceeds the body"),
        "garbage header": (good[:8] + b"\xff" * header_len + good[8 + header_len:], 422, "invalid_checkpoint",
                           "not JSON"),
        "no config": (rebuilt(ckpt.weights, {"format": "l2o-lstm/1"}), 422, "invalid_checkpoint", "no config"),
        "config not JSON": (rebuilt(ckpt.weights, {**meta, "config": "{hidden"}), 422, "invalid_checkpoint",
                            "not valid JSON"),
        "config out of range": (rebuilt(ckpt.weights, {**meta, "config": json.dumps(
            {**ckpt.config.to_dict(), "hidden_size": 10**9})}), 422, "invalid_checkpoint", "hidden_size"),
        "a weight missing": (rebuilt({k: v for k, v in ckpt.weights.items() if k != first}), 422,
                             "invalid_checkpoint", "missing"),
        "a weight too many": (rebuilt({**ckpt.weights, "extra": torch.zeros(2)}), 422, "invalid_checkpoint",
                              "unexpected"),
        "a weight misshapen": (rebuilt({**ckpt.weights, first: ckpt.weights[first].reshape(-1)[:-1]}), 422,
                               "invalid_checkpoint", "shape"),
        "an integer weight": (rebuilt({**ckpt.weights, first: ckpt.weights[first].to(torch.int64)}), 422,
                              "invalid_checkpoint", "dtype"),
        "a NaN weight": (rebuilt({**ckpt.weights, first: torch.full_like(ckpt.weights[first], float("nan"))}), 422,
                         "invalid_checkpoint", "NaN"),
        "weights that blow up": (rebuilt({k: torch.full_like(v, 3e38) for k, v in ckpt.weights.items()}), 422,
                                 "invalid_checkpoint", "non-finite"),
    }


def test_malformed_checkpoints_are_refused_and_nothing_is_stored(client, admin_headers):
    cases = bad_checkpoints()
    record("malformed:checkpoint", cases=len(cases) + 3)  # and the three config headers below
    for what, (body, status, code, fragment) in cases.items():
        response = client.post("/v1/optimizers/evil/versions", content=body, headers={**admin_headers, **OCTET_TYPE})
        assert response.status_code == status, (what, response.status_code, response.text)
        error = response.json()["error"]
        assert error["code"] == code and fragment in error["message"], (what, error)
    assert client.get("/v1/optimizers", headers=admin_headers).json() == []
    assert client.get("/v1/optimizers/evil", headers=admin_headers).status_code == 404


def test_a_config_header_that_is_not_a_config_is_refused(client, admin_headers):
    other = json.dumps(OptimizerConfig(hidden_size=8, num_layers=1).to_dict())
    for value, status, code, fragment in [(other, 422, "invalid_checkpoint", "does not match"),
                                          ("[" * 5000, 400, "bad_request", "not valid JSON"),
                                          ("[1, 2]", 400, "bad_request", "must be a JSON object")]:
        response = client.post("/v1/optimizers/evil/versions", content=checkpoint_bytes(seed=3),
                               headers={**admin_headers, **OCTET_TYPE, "X-L2O-Config": value})
        check_refusal(response, status, code, fragment, value[:20])
    assert client.get("/v1/optimizers", headers=admin_headers).json() == []


def test_the_shapes_of_a_new_session_cannot_ask_for_unbounded_memory(client, optimizer, optimize_headers):
    for shapes in ({"w": [TERA, TERA]}, {"w": [2**62]}, {f"p{i}": [1000] for i in range(5000)}):
        response = client.post("/v1/sessions", json={"optimizer": optimizer, "shapes": shapes},
                               headers=optimize_headers)
        assert response.status_code in (413, 422), response.text
        assert response.json()["error"]["code"] in ("session_too_large", "payload_too_large")
    assert client.get("/v1/sessions", headers=optimize_headers).json() == []



# --- memory, measured in a server process -------------------------------------------------------------------

def rss(pid: int) -> int:
    """The process's resident memory now, in bytes (VmRSS: current use, not a peak)."""
    with open(f"/proc/{pid}/status") as status:
        return int(next(line for line in status if line.startswith("VmRSS:")).split()[1]) * 1024


class MemorySampler:
    """Samples a process's current resident memory every millisecond or so while in the `with` block:
    `baseline` when it began, `peak` the most seen meanwhile."""

    def __init__(self, pid: int) -> None:
        self.pid, self.baseline, self.peak = pid, rss(pid), 0
        self.samples = 0
        self._sampled = threading.Condition()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._done.is_set():
            peak = max(self.peak, rss(self.pid))
            with self._sampled:
                self.peak = peak
                self.samples += 1
                self._sampled.notify_all()
            self._done.wait(0.001)   # the sampling interval

    def wait_for_samples(self, n: int, timeout: float = 10.0) -> None:
        """Wait until `n` more samples have been taken from now."""
        with self._sampled:
            target = self.samples + n
            assert self._sampled.wait_for(lambda: self.samples >= target, timeout), "the sampler stopped"

    def __enter__(self) -> MemorySampler:
        self.peak = self.baseline
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()

    @property
    def growth(self) -> int:
        return self.peak - self.baseline


def test_the_sampler_sees_current_use_where_a_high_water_mark_reads_zero():
    """300 MiB allocated and freed, then 200 MiB: the peak RSS of the process (ru_maxrss) grows by nothing at
    the second allocation; the sampler sees the 200 MiB."""
    code = ("import sys, resource\n"
            "a = bytearray(300 * 2**20); del a\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, flush=True); sys.stdin.readline()\n"
            "b = bytearray(200 * 2**20)\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, flush=True); sys.stdin.readline()\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        maxrss_before = int(proc.stdout.readline())
        with MemorySampler(proc.pid) as sampler:
            proc.stdin.write("\n")
            proc.stdin.flush()
            maxrss_after = int(proc.stdout.readline())
            sampler.wait_for_samples(3)   # taken while the 200 MiB is held (the child waits on its stdin)
        proc.stdin.write("\n")
        proc.stdin.flush()
    finally:
        proc.wait(timeout=30)
    assert (maxrss_after - maxrss_before) * 1024 < 20 * 2**20   # the high-water mark saw nothing
    assert sampler.growth > 190 * 2**20, sampler.growth / 2**20


@pytest.fixture
def served(server_factory):  # noqa: F811  (the fixture imported above)
    """A real `l2o serve` (embedded SQLite, memory store), its admin key, optimizer `opt:1` and a session
    that has stepped once."""
    server = server_factory(register_pretrained="false", step_max_body_bytes=str(2**20),
                            max_upload_bytes=str(2**20)).start()
    key = (server.log.parent / "data" / "admin.key").read_text().strip()
    http = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert http.post("/v1/optimizers/opt/versions", content=checkpoint_bytes(seed=3),
                     headers=OCTET_TYPE).status_code == 201
    sid = http.post("/v1/sessions", json={"optimizer": "opt:1", "shapes": SHAPES}).json()["id"]
    assert http.post(f"/v1/sessions/{sid}/step", content=grads_body(0), headers=ST_TYPE).status_code == 200
    yield server, http, sid
    http.close()
    server.kill()


@pytest.mark.slow
def test_lying_sizes_make_the_server_allocate_nothing_like_what_they_claim(served):
    server, http, sid = served
    state = http.get(f"/v1/sessions/{sid}/state").content
    sent = 0
    # Warm-up: one of each kind of refusal, so the baseline includes what the first answers cost (imports,
    # caches), not what the hostile sizes do.
    http.post(f"/v1/sessions/{sid}/step", content=MALFORMED["header not JSON"][0], headers=ST_TYPE)
    http.post("/v1/optimizers/evil/versions", content=b"", headers=OCTET_TYPE)
    with MemorySampler(server.proc.pid) as sampler:
        for body, *_ in (*MALFORMED.values(), *WRONG_GRADIENTS.values()):
            assert 400 <= http.post(f"/v1/sessions/{sid}/step", content=body, headers=ST_TYPE).status_code < 500
            assert 400 <= http.post("/v1/sessions/resume", content=body, headers=ST_TYPE).status_code < 500
            sent += 2
        for body, *_ in bad_checkpoints().values():
            r = http.post("/v1/optimizers/evil/versions", content=body, headers=OCTET_TYPE)
            assert 400 <= r.status_code < 500, r.text
            sent += 1
        for shapes in ({"w": [TERA, TERA]}, {"w": [2**62]}, {f"p{i}": [1000] for i in range(5000)}):
            assert 400 <= http.post("/v1/sessions", json={"optimizer": "opt:1", "shapes": shapes}).status_code < 500
            sent += 1
    assert http.get(f"/v1/sessions/{sid}/state").content == state
    record("memory:server", requests=sent, baseline=sampler.baseline, peak=sampler.peak, growth=sampler.growth)
    # Each body is at most a few MiB; what they claim is terabytes.
    assert sampler.growth < 64 * 2**20, f"the server's resident memory grew by {sampler.growth / 2**20:.1f} MiB"
