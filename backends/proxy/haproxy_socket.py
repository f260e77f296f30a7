"""One HAProxy CLI command line over a unix socket (runtime API or master CLI), with a deadline."""

from __future__ import annotations

import socket
import time

from bot.errors import BackendError


class ProxyUnreachable(BackendError):
    """Nothing answers on the socket: the proxy is not running (or not with this dir)."""


class CliSocket:
    def __init__(self, path: str, timeout: float) -> None:
        self.path = path
        self.timeout = timeout

    def call(self, line: str) -> str:
        """Send one line (commands separated by `;` run in order, in one go) and read the whole
        answer: HAProxy closes the connection after a non-interactive line."""
        deadline = time.monotonic() + self.timeout
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            try:
                sock.connect(self.path)
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                raise ProxyUnreachable(f"the proxy does not answer on {self.path} "
                                       f"({exc.strerror or exc})") from None
            sock.sendall(line.encode() + b"\n")
            sock.shutdown(socket.SHUT_WR)
            chunks = []
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise socket.timeout()
                sock.settimeout(left)
                data = sock.recv(65536)
                if not data:
                    break
                chunks.append(data)
            return b"".join(chunks).decode(errors="replace")
        except socket.timeout:
            raise BackendError(f"the proxy did not answer on {self.path} within "
                               f"{self.timeout:g} s") from None
        except ProxyUnreachable:
            raise
        except OSError as exc:
            raise ProxyUnreachable(f"the proxy's socket {self.path} failed: "
                                   f"{exc.strerror or exc}") from None
        finally:
            sock.close()
