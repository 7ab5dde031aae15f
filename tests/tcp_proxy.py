"""A TCP proxy for tests: forwards 127.0.0.1:<port> to a target, and can cut the line on demand.

    with TcpProxy(("127.0.0.1", 5432)) as proxy:
        url = proxy.rewrite(pg_url)   # the same database, reached through the proxy
        ...
        proxy.cut()       # every proxied connection closed, new ones refused (the port is unbound)
        proxy.restore()   # listening again on the same port

One thread runs a select loop over the listening socket and every proxied pair, so
`cut` and `restore` are synchronous: when they return, the loop has done them. The
thread stops by itself after `lifetime_s`, closing everything, so a failed test cannot
leave it running; it only ever binds 127.0.0.1.
"""

from __future__ import annotations

import select
import socket
import threading
import time

from sqlalchemy.engine import make_url
from typing_extensions import Self

POLL_S = 0.02  # how often the loop looks at requests from other threads
CHUNK = 65536


class TcpProxy:
    """Forward connections to `target`; `cut()` drops them all and refuses new ones until `restore()`."""

    def __init__(self, target: tuple[str, int], lifetime_s: float = 300.0) -> None:
        self.target = target
        self.host = "127.0.0.1"
        self.accepted = 0  # client connections forwarded so far
        self._listener: socket.socket | None = self._listen(0)
        self.port: int = self._listener.getsockname()[1]
        self._peer: dict[socket.socket, socket.socket] = {}  # each side of a pair -> the other side
        self.lifetime_s = lifetime_s
        self._deadline = time.monotonic() + lifetime_s
        self._request: str | None = None
        self._done = threading.Event()
        self._idle = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name=f"tcp-proxy-{self.port}", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ control (any thread)

    def rewrite(self, url: str, password: str | None = None) -> str:
        """`url` with its host and port replaced by the proxy's (and optionally a password set)."""
        parsed = make_url(url).set(host=self.host, port=self.port)
        if password is not None:
            parsed = parsed.set(password=password)
        return parsed.render_as_string(hide_password=False)

    def cut(self) -> None:
        """Close every proxied connection and stop listening: new connections are refused."""
        self._ask("cut")

    def restore(self) -> None:
        """Listen again on the same port."""
        self._ask("restore")

    def stop(self) -> None:
        self._ask("stop")
        self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _ask(self, request: str) -> None:
        if not self._thread.is_alive():
            if request == "stop":
                return
            raise RuntimeError(f"the proxy on port {self.port} has stopped (it lives {self.lifetime_s:.0f} s at most)")
        with self._idle:
            self._request = request
            if not self._idle.wait_for(lambda: self._request is None, timeout=5):
                raise RuntimeError(f"the proxy on port {self.port} did not {request} within 5 s")

    # ------------------------------------------------------------------ the loop (its own thread)

    def _listen(self, port: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, port))
        sock.listen(16)
        return sock

    def _loop(self) -> None:
        try:
            while time.monotonic() < self._deadline:
                if self._serve_request():
                    return
                sockets = list(self._peer) + ([self._listener] if self._listener is not None else [])
                if not sockets:  # cut, and nothing left to forward
                    time.sleep(POLL_S)
                    continue
                for sock in select.select(sockets, [], [], POLL_S)[0]:
                    if sock is self._listener:
                        self._accept()
                    elif sock in self._peer:
                        self._forward(sock)
        finally:
            self._close_all()
            if self._listener is not None:
                self._listener.close()
                self._listener = None
            with self._idle:
                self._request = None
                self._idle.notify_all()

    def _serve_request(self) -> bool:
        """Do what another thread asked; True to stop the loop."""
        with self._idle:
            request = self._request
            if request is None:
                return False
            if request in ("cut", "stop"):
                self._close_all()
                if self._listener is not None:
                    self._listener.close()
                    self._listener = None
            elif request == "restore" and self._listener is None:
                self._listener = self._listen(self.port)
            self._request = None
            self._idle.notify_all()
            return request == "stop"

    def _accept(self) -> None:
        client, _ = self._listener.accept()
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            client.close()
            return
        for sock in (client, upstream):
            sock.settimeout(5)  # a send never blocks the loop for long
        self._peer[client], self._peer[upstream] = upstream, client
        self.accepted += 1

    def _forward(self, sock: socket.socket) -> None:
        other = self._peer[sock]
        try:
            data = sock.recv(CHUNK)
            if data:
                other.sendall(data)
                return
        except OSError:
            pass
        self._close_pair(sock)

    def _close_pair(self, sock: socket.socket) -> None:
        other = self._peer.pop(sock, None)
        if other is not None:
            self._peer.pop(other, None)
            other.close()
        sock.close()

    def _close_all(self) -> None:
        while self._peer:
            self._close_pair(next(iter(self._peer)))
