"""TrafficProxy on HAProxy: switches through the runtime API (one line on admin.sock, no reload),
the service's file rewritten after each change so a restarted proxy serves the same address, and
reloads (rare: a new or changed service) through the master socket, checked before and after.

The truth of what serves is the running proxy (`show servers state`); the file follows it.
"""

from __future__ import annotations

import errno
import os
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable

from bot.config import ProxySettings
from bot.errors import BackendError
from bot.ports import StepCallback

from backends.proxy import haproxy_config as cfg
from backends.proxy.haproxy_config import ProxyAnswerError, Slot
from backends.proxy.haproxy_socket import CliSocket, ProxyUnreachable

UNIT = "deploybot-proxy"
# sun_path holds 108 bytes with the terminating NUL.
MAX_SOCKET_PATH = 107
POLL = 0.1


def _step(on_step: StepCallback | None, message: str) -> None:
    if on_step is not None:
        on_step(message)


def write_atomically(path: Path, text: str) -> None:
    """tmp + rename in the same folder; the tmp name does not end in .cfg, so a reload that
    happens meanwhile never reads half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


class HaproxyProxy:
    def __init__(self, settings: ProxySettings, key: str,
                 docker_client: Callable[[], object] | None = None, *,
                 sleep: Callable[[float], None] = time.sleep,
                 monotonic: Callable[[], float] = time.monotonic,
                 haproxy_binary: str | None = None) -> None:
        try:
            self.key = cfg.check_key(key)
        except ValueError as exc:
            raise BackendError(f"proxy: {exc}") from None
        self.settings = settings
        self.dir = Path(settings.dir)
        self.conf_d = self.dir / "conf.d"
        self.global_file = self.conf_d / "00-global.cfg"
        self.service_file = self.conf_d / f"50-{key}.cfg"
        self.pending = self.dir / f"reload-pending-{key}"
        self.admin = CliSocket(str(self.dir / "admin.sock"), settings.timeout)
        self.master = CliSocket(str(self.dir / "master.sock"), settings.timeout)
        self._docker_client = docker_client
        self._sleep = sleep
        self._monotonic = monotonic
        self._binary = haproxy_binary or shutil.which("haproxy") or "/usr/sbin/haproxy"

    # -- reading the running proxy ------------------------------------------------------------

    def _slots(self) -> dict[str, Slot] | None:
        """The running proxy's slots of this service; None when it has no such backend."""
        answer = self.admin.call(f"show servers state {self.key}")
        try:
            return cfg.parse_servers_state(answer, self.key)
        except ProxyAnswerError as exc:
            raise BackendError(f"proxy: {exc}") from None

    def _loaded_slots(self) -> dict[str, Slot]:
        slots = self._slots()
        if slots is None:
            raise BackendError(f"the proxy in {self.dir} has no service {self.key}: it was "
                               "started or reloaded without its file; the next deploy's proxy "
                               "check (ensure) loads it")
        return slots

    def serving(self) -> str | None:
        slots = self._slots()
        if slots is None:
            return None
        return next((s.address for s in slots.values() if s.state == "ready"), None)

    def sessions(self, address: str) -> int:
        answer = self.admin.call("show stat")
        try:
            return cfg.parse_sessions(answer, self.key, address)
        except (ProxyAnswerError, ValueError) as exc:
            raise BackendError(f"proxy: {exc}") from None

    def wait_drained(self, address: str, timeout: float, on_step: StepCallback) -> bool:
        deadline = self._monotonic() + timeout
        while True:
            left = self.sessions(address)
            if left == 0:
                _step(on_step, f"proxy: {address} has drained")
                return True
            if self._monotonic() >= deadline:
                _step(on_step, f"proxy: {address} still has {left} session(s) after {timeout:g} s")
                return False
            self._sleep(min(POLL * 2, max(0.0, deadline - self._monotonic())))

    # -- switching ------------------------------------------------------------------------------

    def _address(self, address: str) -> tuple[str, int]:
        try:
            return cfg.check_address(address)
        except ValueError as exc:
            raise BackendError(f"proxy: {exc}") from None

    @staticmethod
    def _target(slots: dict[str, Slot], address: str) -> tuple[Slot, Slot | None]:
        """(the slot that will serve `address`, the slot serving now). The slot that already
        holds the address is reused (a switch back to the draining one needs no address)."""
        serving = next((s for s in slots.values() if s.state == "ready"), None)
        idle = [s for s in slots.values() if s is not serving]
        target = next((s for s in idle if s.address == address), None)
        if target is None:
            target = next((s for s in idle if s.address is None), idle[0])
        return target, serving

    def _switch_commands(self, target: Slot, serving: Slot | None, address: str) -> list[str]:
        ip, port = self._address(address)
        cmds = []
        if target.address != address:
            cmds.append(f"set server {self.key}/{target.name} addr {ip} port {port}")
        cmds.append(f"set server {self.key}/{target.name} state ready")
        if serving is not None:
            cmds.append(f"set server {self.key}/{serving.name} state drain")
        return cmds

    def route(self, address: str, on_step: StepCallback) -> str | None:
        """Returns the address that served before, or None (also when `address` serves already:
        nothing drains then)."""
        ip, port = self._address(address)
        slots = self._loaded_slots()
        target, serving = self._target(slots, address)
        if serving is not None and serving.address == address:
            return None
        if target.address != address:
            # The idle slot gets its address first: no traffic goes there yet, so a failure
            # here changes nothing that serves.
            self._run(f"set server {self.key}/{target.name} addr {ip} port {port}",
                      f"setting slot {target.name} to {address}")
            target = Slot(target.name, address, target.state)
        expected = dict(slots)
        expected[target.name] = Slot(target.name, address, "ready")
        if serving is not None:
            expected[serving.name] = Slot(serving.name, serving.address, "drain")
        self._write_service(expected)  # fail closed: no switch unless it is written down
        # The switch proper: one line, so no request sees both slots ready or neither.
        line = "; ".join(self._switch_commands(target, serving, address))
        try:
            answer = self.admin.call(line)
        except BackendError as exc:
            answer = exc.message  # sent, but was it applied? The proxy's state says.
        try:
            after = self._loaded_slots()
        except BackendError as exc:
            self._rewrite_from_runtime()
            raise BackendError(f"the switch of {self.key} to {address} is unknown: {exc.message}",
                               hint="echo 'show servers state KEY' | socat stdio "
                                    f"unix-connect:{self.admin.path}".replace("KEY", self.key)
                               ) from None
        if after.get(target.name) != expected[target.name] or (
                serving is not None and after[serving.name].state == "ready"):
            self._restore(target, serving)
            self._rewrite_from_runtime()
            problems = "; ".join(cfg.answer_errors(answer)) or answer.strip()[:200] or "no answer"
            raise BackendError(f"the proxy did not switch {self.key} to {address} ({problems}); "
                               f"{serving.address if serving else 'nothing'} still serves")
        before = serving.address if serving else None
        _step(on_step, f"proxy: new requests to {address}"
              + (f"; {before} drains" if before else ""))
        return before

    def forget(self, address: str, on_step: StepCallback) -> None:
        slots = self._loaded_slots()
        for slot in slots.values():
            if slot.address != address:
                continue
            slots[slot.name] = Slot(slot.name, None, "maint")
            self._write_service(slots)
            ip, port = self._address(cfg.EMPTY)
            self._run(f"set server {self.key}/{slot.name} state maint; "
                      f"set server {self.key}/{slot.name} addr {ip} port {port}",
                      f"emptying slot {slot.name}")
            _step(on_step, f"proxy: {address} gets no requests any more")

    def _restore(self, target: Slot, serving: Slot | None) -> None:
        """Best effort after a half-done switch: the one that served serves alone again."""
        cmds = [f"set server {self.key}/{target.name} state maint"]
        if serving is not None:
            cmds.insert(0, f"set server {self.key}/{serving.name} state ready")
        try:
            self.admin.call("; ".join(cmds))
        except BackendError:
            pass

    def _run(self, line: str, what: str) -> str:
        answer = self.admin.call(line)
        errors = cfg.answer_errors(answer)
        if errors:
            raise BackendError(f"the proxy refused {what} for {self.key}: {'; '.join(errors)}")
        return answer

    def by_hand(self, address: str) -> list[str]:
        # From the file (it follows every switch), so this works with the proxy down too.
        try:
            _, slots = cfg.parse_service(self.service_file.read_text())
        except OSError:
            slots = {}
        for name in cfg.SLOTS:
            slots.setdefault(name, Slot(name, None, "maint"))
        target, serving = self._target(slots, address)
        socat = ["socat", "stdio", f"unix-connect:{self.admin.path}"]
        try:
            commands = self._switch_commands(target, serving, address)
        except BackendError:
            commands = [f"set server {self.key}/{target.name} addr IP port PORT",
                        f"set server {self.key}/{target.name} state ready"]
        return [
            f"echo {shlex.quote('; '.join(commands))} | {shlex.join(socat)}",
            f"echo {shlex.quote(f'show servers state {self.key}')} | {shlex.join(socat)}",
        ]

    # -- files ----------------------------------------------------------------------------------

    def _write_service(self, slots: dict[str, Slot]) -> None:
        text = cfg.render_service(self.key, self.settings.listen, slots)
        try:
            if self._read(self.service_file) != text:
                write_atomically(self.service_file, text)
        except OSError as exc:
            raise BackendError(f"cannot write {self.service_file}: {exc.strerror or exc}") from None

    def _rewrite_from_runtime(self) -> None:
        try:
            slots = self._slots()
            if slots is not None:
                self._write_service(slots)
        except BackendError:
            pass  # the next ensure() writes the file from the running proxy

    @staticmethod
    def _read(path: Path) -> str | None:
        try:
            return path.read_text()
        except FileNotFoundError:
            return None

    def _file_slots(self) -> dict[str, Slot]:
        text = self._read(self.service_file)
        return cfg.parse_service(text)[1] if text else {}

    # -- ensure ---------------------------------------------------------------------------------

    def ensure(self, on_step: StepCallback) -> None:
        longest = max(len(self.admin.path), len(self.master.path))
        if longest > MAX_SOCKET_PATH:
            raise BackendError(f"proxy dir {self.dir} is too long for its sockets (a unix socket "
                               f"path holds {MAX_SOCKET_PATH} bytes): choose a shorter `dir`")
        try:
            self.conf_d.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BackendError(f"cannot create {self.conf_d}: {exc.strerror or exc}") from None
        container = None
        if self.settings.run == "container":
            from backends.proxy.haproxy_container import ProxyContainer

            container = ProxyContainer(self, self._docker_client)
            if not container.running():
                self._start(container, on_step)
                return
        try:
            self.master.call("show proc")
        except ProxyUnreachable:
            if container is not None:
                raise BackendError(
                    f"the proxy container {container.name} runs but nothing answers on "
                    f"{self.master.path}: was it started with another dir? (docker inspect "
                    f"{container.name}; remove it and deploy again to recreate it)") from None
            # Written anyway: the proxy started by hand then loads this service.
            self._write_files(self._file_slots())
            raise BackendError(
                f"the proxy is not running (nothing answers on {self.master.path}): start it "
                f"(systemctl start {UNIT}, see deploy/haproxy/)") from None
        self._converge(on_step, container)

    def _start(self, container, on_step: StepCallback) -> None:
        """run: container, stopped or missing: started with this service's file in place."""
        self._check_port_free()
        old_global, old_service = self._read(self.global_file), self._read(self.service_file)
        self._write_files(self._file_slots())
        try:
            container.start(on_step)
        except BackendError:
            self._put_back(old_global, old_service)
            raise
        self.pending.unlink(missing_ok=True)  # a fresh start loaded every file
        self._wait_loaded(on_step)

    def _desired(self, runtime: dict[str, Slot] | None) -> tuple[str, str]:
        slots = runtime if runtime is not None else self._file_slots()
        return (cfg.render_global(str(self.dir)),
                cfg.render_service(self.key, self.settings.listen, slots))

    def _write_files(self, slots: dict[str, Slot]) -> None:
        try:
            if self._read(self.global_file) != cfg.render_global(str(self.dir)):
                write_atomically(self.global_file, cfg.render_global(str(self.dir)))
        except OSError as exc:
            raise BackendError(f"cannot write {self.global_file}: {exc.strerror or exc}") from None
        self._write_service(slots)

    def _converge(self, on_step: StepCallback, container) -> None:
        runtime = self._slots()
        global_text, service_text = self._desired(runtime)
        old_global, old_service = self._read(self.global_file), self._read(self.service_file)
        old_listen = cfg.parse_service(old_service)[0] if old_service else None
        if (runtime is not None and not self.pending.exists() and old_global == global_text
                and old_listen == self.settings.listen):
            # Loaded as written (no reload was left half-done). Only the slots may differ:
            # deploybot died between a switch's two steps; the running proxy is the truth.
            if old_service != service_text:
                self._write_service(runtime)
            return
        if runtime is None or old_listen != self.settings.listen:
            self._check_port_free()
        self._validate(global_text, service_text)
        try:
            # Until the reload is over: should deploybot die in between, the next ensure
            # reloads even though the files already say what is wanted.
            write_atomically(self.pending, f"{self.settings.listen}\n")
            write_atomically(self.global_file, global_text)
            write_atomically(self.service_file, service_text)
        except OSError as exc:
            self._put_back(old_global, old_service)
            raise BackendError(f"cannot write the proxy's files in {self.conf_d}: "
                               f"{exc.strerror or exc}") from None
        _step(on_step, f"proxy: reloading with {self.service_file.name}")
        try:
            self._reload(container)
        except BackendError:
            self._put_back(old_global, old_service)
            raise
        self.pending.unlink(missing_ok=True)
        self._wait_loaded(on_step)

    def _put_back(self, old_global: str | None, old_service: str | None) -> None:
        """The files as they were, so the next reload (of any service of this dir) works."""
        for path, text in ((self.global_file, old_global), (self.service_file, old_service)):
            try:
                if text is None:
                    path.unlink(missing_ok=True)
                else:
                    write_atomically(path, text)
            except OSError:
                return  # the pending mark stays: the next ensure reloads
        self.pending.unlink(missing_ok=True)

    def _check_port_free(self) -> None:
        """A port another program holds, said before HAProxy refuses it (`haproxy -c` does not
        bind). HAProxy's own listeners use SO_REUSEPORT; this plain bind fails on them too, so a
        port taken by another service of the same proxy is caught as well."""
        host, _, port = self.settings.listen.rpartition(":")
        family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host.strip("[]"), int(port)))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    neighbour = self._neighbour_on(port)
                    if neighbour:
                        raise BackendError(
                            f"port {port} ({self.settings.listen}, the `listen` of {self.key}) "
                            f"is the listen of {neighbour} in the same proxy ({self.conf_d}): "
                            "give each service a listen of its own") from None
                    raise BackendError(
                        f"port {port} ({self.settings.listen}, the `listen` of {self.key}) is "
                        "taken by another program: stop it or choose another listen (who holds "
                        f"it: ss -ltnp 'sport = :{port}')") from None
                if exc.errno != errno.EADDRNOTAVAIL:
                    raise BackendError(f"cannot listen on {self.settings.listen}: "
                                       f"{exc.strerror}") from None

    def _neighbour_on(self, port: str) -> str | None:
        """The other service of this dir whose file binds `port`, if any."""
        for f in sorted(self.conf_d.glob("50-*.cfg")):
            if f == self.service_file:
                continue
            listen = cfg.parse_service(self._read(f) or "")[0]
            if listen and listen.rpartition(":")[2] == port:
                return f.name[3:-4]
        return None

    def _validate(self, global_text: str, service_text: str) -> None:
        """`haproxy -c` over a copy of conf.d with the new files, when the host has haproxy."""
        if not os.access(self._binary, os.X_OK):
            return
        with tempfile.TemporaryDirectory(prefix="deploybot-haproxy-") as tmp:
            for f in self.conf_d.glob("*.cfg"):
                shutil.copyfile(f, Path(tmp) / f.name)
            (Path(tmp) / self.global_file.name).write_text(global_text)
            (Path(tmp) / self.service_file.name).write_text(service_text)
            try:
                done = subprocess.run([self._binary, "-c", "-q", "-f", tmp], capture_output=True,
                                      text=True, timeout=max(10.0, self.settings.timeout),
                                      stdin=subprocess.DEVNULL, check=False)
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise BackendError(f"cannot check the proxy's configuration with "
                                   f"{self._binary}: {exc}") from None
        if done.returncode != 0:
            reason = "; ".join(cfg.alerts(done.stdout + done.stderr)) or done.stderr.strip()[-300:]
            raise BackendError(f"HAProxy refuses the configuration of {self.key}: {reason} "
                               "(nothing was reloaded)")

    def _reload(self, container) -> None:
        """`reload` on the master socket, then wait for a new worker, or for the master to say
        the reload failed (it keeps the old worker then: nothing changed)."""
        before = self._proc()
        try:
            self.master.call("reload")
        except ProxyUnreachable:
            pass  # the master re-executes itself and drops this connection
        deadline = self._monotonic() + max(15.0, self.settings.timeout)
        while True:
            try:
                now = self._proc()
            except BackendError:
                now = None  # the master is between its old and new self
            if now is not None and now.reloads > before.reloads:
                if now.failed:
                    raise BackendError(self._refused_message(container))
                fresh = [pid for pid, n in now.workers.items()
                         if n == 0 and pid not in before.workers]
                if fresh:
                    return
            if self._monotonic() >= deadline:
                raise BackendError(f"the proxy did not finish its reload within "
                                   f"{max(15.0, self.settings.timeout):g} s "
                                   f"({self._log_hint(container)})")
            self._sleep(POLL)

    def _proc(self) -> cfg.Processes:
        try:
            return cfg.parse_proc(self.master.call("show proc"))
        except ProxyAnswerError as exc:
            raise BackendError(f"proxy: {exc}") from None

    def _log_hint(self, container) -> str:
        if container is not None:
            return f"docker logs {self.settings.container_name}"
        return f"journalctl -u {UNIT}"

    def _refused_message(self, container) -> str:
        reasons = container.alerts() if container is not None else []
        why = "; ".join(reasons) if reasons else f"HAProxy's reason: {self._log_hint(container)}"
        return (f"the proxy refused the new configuration of {self.key} ({why}); it keeps "
                "serving as before and its files were put back")

    def _wait_loaded(self, on_step: StepCallback) -> None:
        """Until the worker that answers admin.sock has this service's backend."""
        deadline = self._monotonic() + max(15.0, self.settings.timeout)
        problem = "no answer"
        while True:
            try:
                if self._slots() is not None:
                    _step(on_step, f"proxy: {self.key} is served on {self.settings.listen}")
                    return
                problem = f"no backend {self.key}"
            except BackendError as exc:
                problem = exc.message
            if self._monotonic() >= deadline:
                raise BackendError(f"the proxy did not load {self.key} within "
                                   f"{max(15.0, self.settings.timeout):g} s: {problem}")
            self._sleep(POLL)
