"""TCP proxies for the fault tests: one to cut (the database "goes away" for the app without touching the
shared PostgreSQL server other tests use), and one that catches a step in flight (the API is stopped while
it holds a step request whose answer has not reached the client)."""

from __future__ import annotations

import contextlib
import socket
import threading


class TcpProxy:
    """Forwards 127.0.0.1:<port> to `target`. `cut()` drops every open connection and turns new ones away
    (accepted, then closed at once, like a server that died); `restore()` lets them through again."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.passing = threading.Event()
        self.passing.set()
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True, name="test-proxy").start()

    def cut(self) -> None:
        self.passing.clear()
        with self._lock:
            for s in self._open:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            self._open.clear()

    def restore(self) -> None:
        self.passing.set()

    def close(self) -> None:
        self._closed = True
        self.cut()
        self.listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.passing.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._open.update((client, upstream))
            self._connect(client, upstream)

    def _connect(self, client: socket.socket, upstream: socket.socket) -> None:
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
            source.close()
            with self._lock:
                self._open.discard(source)
                self._open.discard(sink)


class _Connection:
    """One client connection through a StepCatcher: whether the server's bytes on it are being held back."""

    def __init__(self) -> None:
        self.holding = False


class StepCatcher(TcpProxy):
    """A TcpProxy in front of `l2o serve` that catches a step request in flight.

    `catch()` arms it: the next step request (POST .../step) is forwarded whole to the server, whatever the
    server answers on that connection is held back, and `caught` is set once the request's last byte went
    out. The server then holds the request and the client has no answer: stop the server. `let_go(deliver)`
    forwards what the server answered before it stopped (deliver=True: a graceful stop answers what it
    had in flight) or throws it away (the answer lost with a killed server), and the connection closes.
    """

    def __init__(self, target: tuple[str, int]) -> None:
        self.armed = threading.Event()
        self.caught = threading.Event()
        self.released = threading.Event()
        self.deliver = False
        self.in_flight: list[str] = []   # each caught request's request line
        self.answered: list[int] = []    # each caught request: the bytes the server had answered when let go
        super().__init__(target)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def catch(self) -> None:
        self.caught.clear()
        self.released.clear()
        self.armed.set()

    def let_go(self, deliver: bool) -> None:
        self.deliver = deliver
        self.released.set()

    def _connect(self, client: socket.socket, upstream: socket.socket) -> None:
        conn = _Connection()
        threading.Thread(target=self._requests, args=(client, upstream, conn), daemon=True).start()
        threading.Thread(target=self._answers, args=(upstream, client, conn), daemon=True).start()

    def _requests(self, client: socket.socket, upstream: socket.socket, conn: _Connection) -> None:
        """Client to server, noting where each request ends (by its Content-Length; the SDK sends no
        chunked bodies)."""
        head, body_left, catching = b"", 0, False
        try:
            while data := client.recv(65536):
                rest, complete = data, False
                while rest:
                    if body_left > 0:
                        taken = min(body_left, len(rest))
                        body_left -= taken
                        rest = rest[taken:]
                        complete = body_left == 0
                        continue
                    head += rest
                    end = head.find(b"\r\n\r\n")
                    if end < 0:
                        break
                    lines = head[:end].decode("latin-1").split("\r\n")
                    rest, head = head[end + 4:], b""
                    length = next((int(v) for k, _, v in (line.partition(":") for line in lines[1:])
                                   if k.strip().lower() == "content-length"), 0)
                    method, path = (lines[0].split(" ") + ["", ""])[:2]
                    if method == "POST" and path.endswith("/step") and self.armed.is_set():
                        self.armed.clear()
                        conn.holding = catching = True   # before a byte of it goes out
                        self.in_flight.append(lines[0])
                    body_left = length
                    complete = length == 0
                upstream.sendall(data)
                if catching and complete:
                    catching = False
                    self.caught.set()
        except OSError:
            pass
        finally:
            self._close(client, upstream)

    def _answers(self, upstream: socket.socket, client: socket.socket, conn: _Connection) -> None:
        held = bytearray()
        try:
            while data := upstream.recv(65536):
                if conn.holding:
                    held += data
                else:
                    client.sendall(data)
        except OSError:
            pass
        finally:
            if conn.holding:   # the server is gone: what it answered goes on, or is lost, as the test says
                self.released.wait(timeout=120)
                self.answered.append(len(held))
                if self.deliver:
                    with contextlib.suppress(OSError):
                        client.sendall(held)
            self._close(upstream, client)

    def _close(self, *socks: socket.socket) -> None:
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        with self._lock:
            self._open.difference_update(socks)
