"""A unix-socket proxy in front of a Docker engine that holds back one chosen API request.

A `deploybot deploy` process pointed at it (DOCKER_HOST) runs normally until it sends the
request that matches `pattern`: that request never reaches the engine, `held` is set, and the
test kills the process there: exactly between two Docker calls, without any sleep.
"""

from __future__ import annotations

import re
import socket
import threading
from pathlib import Path


class DockerGate:
    def __init__(self, engine_socket: str, folder: Path, pattern: str) -> None:
        self.engine = engine_socket
        self.path = str(folder / "gate.sock")
        self.pattern = re.compile(pattern.encode())
        self.held = threading.Event()
        self.requests: list[str] = []  # request lines seen, for failure messages
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sockets: list[socket.socket] = [self._server]
        self._lock = threading.Lock()

    @property
    def docker_host(self) -> str:
        return f"unix://{self.path}"

    def __enter__(self) -> "DockerGate":
        self._server.bind(self.path)
        self._server.listen(16)
        threading.Thread(target=self._accept, daemon=True, name="docker-gate").start()
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            for s in self._sockets:
                try:
                    s.close()
                except OSError:
                    pass

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            upstream.connect(self.engine)
            with self._lock:
                self._sockets += [client, upstream]
            threading.Thread(target=self._requests, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while chunk := src.recv(65536):
                dst.sendall(chunk)
        except OSError:
            pass

    def _requests(self, client: socket.socket, upstream: socket.socket) -> None:
        """Forward request by request (head, then a Content-Length body) until the held one."""
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    chunk = client.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                head, _, buf = buf.partition(b"\r\n\r\n")
                line = head.split(b"\r\n", 1)[0]
                self.requests.append(line.decode(errors="replace"))
                if not self.held.is_set() and self.pattern.search(line):
                    self.held.set()
                    return  # never forwarded: the client waits for an answer that never comes
                length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                need = int(length.group(1)) if length else 0
                while len(buf) < need:
                    chunk = client.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                upstream.sendall(head + b"\r\n\r\n" + buf[:need])
                buf = buf[need:]
        except OSError:
            pass
