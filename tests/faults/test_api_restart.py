"""The API process dies under a remote training run (RemoteOptimizer through the SDK), and comes back on the
same port. Nothing is lost or applied twice: the final parameters are bit-identical to an uninterrupted run.
Each stop lands while a step is in flight: the client talks to the server through a StepCatcher proxy, and
the server is stopped once a step request has reached it whole and before its answer has reached the client.

    store    signal   what carries the run on
    Redis    SIGKILL  the SDK's retries; every step's state was in Redis before its answer was sent
    memory   SIGTERM  the SDK's retries; a graceful shutdown saves the sessions and the restart loads them
    memory   SIGKILL  nothing can: the SDK says SessionLostError, and the run resumes from its last state_dict()
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable

import pytest

from client import Client, RemoteOptimizer, SessionLostError
from tests.faults.conftest import model, parameters, train_step
from tests.faults.proxy import StepCatcher
from tests.live_server import ServeProcess
from tests.record import record
from tests.sessions.conftest import REDIS_URL

pytestmark = pytest.mark.slow  # real server processes, restarted: ~10-20 s each

STEPS = 40


class Faults:
    """Called after each step of a run: at the steps named, arms the proxy to catch the next step request,
    and stops the server (in the background) once that request has reached it whole and before its answer
    has reached the client; then starts the server again on the same port."""

    def __init__(self, server: ServeProcess, proxy: StepCatcher, at: tuple[int, ...], how: str) -> None:
        self.server, self.proxy, self.at, self.how = server, proxy, at, how
        self.fired: set[int] = set()
        self.done: list[int] = []
        self.threads: list[threading.Thread] = []

    def __call__(self, step: int) -> None:
        if step in self.at and step not in self.fired:  # once: a run that went back passes the step again
            self.fired.add(step)
            self.proxy.catch()
            thread = threading.Thread(target=self._stop_and_start, args=(step,))
            thread.start()
            self.threads.append(thread)

    def _stop_and_start(self, step: int) -> None:
        assert self.proxy.caught.wait(timeout=60), f"no step request reached the server after step {step}"
        if self.how == "kill":
            self.server.kill()
        else:
            assert self.server.terminate() in (0, -15), self.server.log.read_text()
        # A graceful stop answers what it had in flight; a killed server's answer, if it sent one, is lost.
        self.proxy.let_go(deliver=self.how != "kill")
        self.server.start()
        self.done.append(step)

    def join(self) -> None:
        for thread in self.threads:
            thread.join(timeout=60)
        assert not any(t.is_alive() for t in self.threads), "a stop and start did not finish"


@pytest.fixture
def catcher(request) -> Callable[[ServeProcess], StepCatcher]:
    """catcher(server) -> a StepCatcher in front of it, closed at the end."""
    made: list[StepCatcher] = []

    def make(server: ServeProcess) -> StepCatcher:
        made.append(StepCatcher(("127.0.0.1", server.port)))
        return made[-1]

    yield make
    for proxy in made:
        proxy.close()


def in_flight(proxy: StepCatcher, session_id: str) -> list[str]:
    """What the server held when stopped: one step request of the run's session per stop."""
    assert proxy.in_flight == [f"POST /v1/sessions/{session_id}/step HTTP/1.1"] * len(proxy.in_flight)
    return proxy.in_flight


def admin_client(url: str, tmp_path) -> Client:
    key = (tmp_path / "data" / "admin.key").read_text().strip()
    return Client(url, key, max_retries=60)


def reference_run(server: ServeProcess, tmp_path) -> dict:
    net = model()
    with admin_client(server.url, tmp_path) as l2o:
        opt = RemoteOptimizer(net.named_parameters(), optimizer="opt", client=l2o)
        for i in range(STEPS):
            train_step(net, opt, i)
        opt.close()
    return parameters(net)


def run_through_faults(proxy: StepCatcher, tmp_path, faults: Faults) -> tuple[dict, str]:
    net = model()
    with admin_client(proxy.url, tmp_path) as l2o:
        opt = RemoteOptimizer(net.named_parameters(), optimizer="opt", client=l2o)
        for i in range(STEPS):
            train_step(net, opt, i)
            faults(i)
        faults.join()
        assert opt.step_count == STEPS
        assert l2o.sessions.get(opt.session_id).step == STEPS  # the server applied each step exactly once
    return parameters(net), opt.session_id


def identical(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)


def test_sigkill_with_the_redis_store_loses_nothing(server_factory, catcher, tmp_path, redis_prefix, fast_retries):
    server = server_factory(session_store=REDIS_URL, session_key_prefix=redis_prefix).start()
    expected = reference_run(server, tmp_path)
    proxy = catcher(server)
    faults = Faults(server, proxy, at=(8, 24), how="kill")
    got, session_id = run_through_faults(proxy, tmp_path, faults)
    assert faults.done == [8, 24]
    assert len(in_flight(proxy, session_id)) == 2
    assert identical(got, expected)
    record("restart:redis-sigkill", stops=len(faults.done), steps=STEPS, in_flight=len(proxy.in_flight),
           answered_before_stop=sum(n > 0 for n in proxy.answered), identical=True)


def test_sigterm_with_the_memory_store_loses_nothing(server_factory, catcher, tmp_path, fast_retries):
    server = server_factory(session_store="memory").start()
    expected = reference_run(server, tmp_path)
    proxy = catcher(server)
    faults = Faults(server, proxy, at=(12,), how="terminate")
    got, session_id = run_through_faults(proxy, tmp_path, faults)
    assert faults.done == [12]
    assert len(in_flight(proxy, session_id)) == 1
    assert identical(got, expected)
    record("restart:memory-sigterm", stops=len(faults.done), steps=STEPS, in_flight=len(proxy.in_flight),
           answered_before_stop=sum(n > 0 for n in proxy.answered), identical=True)


def test_sigkill_with_the_memory_store_is_a_clear_session_lost_and_resumes(server_factory, catcher, tmp_path,
                                                                          fast_retries):
    """The run checkpoints every 5 steps (the model's parameters and the optimizer's state_dict, as torch
    users do); when the session is lost it goes back to the last checkpoint and carries on."""
    server = server_factory(session_store="memory").start()
    expected = reference_run(server, tmp_path)
    proxy = catcher(server)
    faults = Faults(server, proxy, at=(17,), how="kill")
    net = model()
    lost: list[tuple[int, SessionLostError]] = []
    with admin_client(proxy.url, tmp_path) as l2o:
        opt = RemoteOptimizer(net.named_parameters(), optimizer="opt", client=l2o)
        first_session = None
        i, checkpoint = 0, None
        while i < STEPS:
            try:
                if i % 5 == 0:
                    checkpoint = (i, parameters(net), copy.deepcopy(opt.state_dict()))
                train_step(net, opt, i)
                first_session = first_session or opt.session_id
            except SessionLostError as exc:  # from the step, or from the state_dict() that checkpoints
                lost.append((i, exc))
                i, params, state = checkpoint
                net.load_state_dict(params)
                opt.load_state_dict(state)
                continue
            faults(i)
            i += 1
        faults.join()
        assert l2o.sessions.get(opt.session_id).step == STEPS
    assert faults.done == [17]
    assert len(in_flight(proxy, first_session)) == 1
    assert [at for at, _ in lost] == [18], lost  # the step that was in flight when the server died
    message = str(lost[0][1])
    assert "restarted" in message and "state_dict" in message, message
    assert identical(parameters(net), expected)
    record("restart:memory-sigkill", stops=len(faults.done), steps=STEPS, in_flight=len(proxy.in_flight),
           sessions_lost=len(lost), lost_at=lost[0][0], identical=True)
