"""Build a service's image from source, tag it VERSION and latest, push both (Docker SDK).

Credentials come only from the environment variables that `build.username_env` and
`build.password_env` name; they are handed to the engine per push and never logged or put into a
message (any error text that contains the password is scrubbed).
"""

from __future__ import annotations

import os
import re
import time
from typing import Any, Callable, Iterable, Mapping

import docker
import docker.errors
import docker.utils
import requests.exceptions

from backends.deploy.docker import explain
from bot.config import ImageBuild
from bot.errors import BackendError
from bot.ports import StepCallback

UNREACHABLE = ("connection refused", "no such host", "i/o timeout", "dial tcp",
               "connection reset", "server gave http response to https client",
               "network is unreachable", "timeout exceeded", "unexpected eof")


def split_image(image: str) -> tuple[str | None, str]:
    """'127.0.0.1:5000/team/web' -> ('127.0.0.1:5000', 'team/web'); Docker Hub -> (None, image)."""
    first, sep, rest = image.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first, rest
    return None, image


class DockerImageBuilder:
    """ImageBuilder: docker build → tag VERSION and latest → push both → the pushed digest."""

    def __init__(self, environ: Mapping[str, str] | None = None,
                 client_factory: Callable[[float], docker.APIClient] | None = None) -> None:
        self.environ = os.environ if environ is None else environ
        self._client_factory = client_factory or self._default_client

    def _default_client(self, timeout: float) -> docker.APIClient:
        kwargs = docker.utils.kwargs_from_env(environment=dict(self.environ))
        return docker.APIClient(timeout=int(timeout), **kwargs)

    def _client(self, timeout: float) -> docker.APIClient:
        try:
            client = self._client_factory(timeout)
            client.ping()
            return client
        except Exception as exc:
            raise BackendError(
                f"Docker: {explain(exc, self.environ.get('DOCKER_HOST'))}") from None

    def _credentials(self, settings: ImageBuild) -> dict[str, str] | None:
        if not settings.username_env and not settings.password_env:
            return None
        missing = [name for name in (settings.username_env, settings.password_env)
                   if name and not self.environ.get(name)]
        if missing:
            raise BackendError(f"registry credentials: environment variable(s) "
                               f"{', '.join(missing)} not set",
                               hint="set them in deploybot's environment (build.username_env / "
                                    "build.password_env name them)")
        return {"username": self.environ.get(settings.username_env or "", ""),
                "password": self.environ.get(settings.password_env or "", "")}

    # -- the three steps --------------------------------------------------------------------------

    def build(self, image: str, version: str, settings: ImageBuild,
              on_step: StepCallback) -> str:
        ref = f"{image}:{version}"
        auth = self._credentials(settings)
        secret = (auth or {}).get("password", "")
        deadline = time.monotonic() + settings.timeout
        client = self._client(min(settings.timeout, 300))
        try:
            image_id = self._build(client, ref, settings, deadline, on_step)
            on_step(f"tagging {ref} as {image}:latest")
            try:
                client.tag(image_id, image, version)
                client.tag(image_id, image, "latest")
            except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
                raise BackendError(f"cannot tag {ref}: {explain(exc)}") from None
            if not settings.push:
                on_step(f"built {ref} ({image_id[:19]}); not pushed (build.push: false)")
                return image_id
            digest = self._push(client, image, version, auth, deadline, settings.timeout,
                                on_step, secret)
            self._push(client, image, "latest", auth, deadline, settings.timeout, on_step, secret)
            on_step(f"pushed {ref} and {image}:latest ({digest})")
            return digest
        finally:
            client.close()

    def _build(self, client: docker.APIClient, ref: str, settings: ImageBuild, deadline: float,
               on_step: StepCallback) -> str:
        if not os.path.isdir(settings.context):
            raise BackendError(f"build context {settings.context} is not a directory",
                               hint="build.context is relative to deploybot's working directory")
        dockerfile = settings.dockerfile
        if dockerfile and not os.path.isfile(os.path.join(settings.context, dockerfile)):
            raise BackendError(f"Dockerfile {dockerfile} not found in {settings.context}")
        on_step(f"building {ref} from {settings.context}")
        image_id = None
        pending = ""
        log_tail: list[str] = []
        try:
            stream = client.build(path=settings.context, dockerfile=dockerfile, tag=ref,
                                  buildargs=dict(settings.build_args), rm=True, forcerm=True,
                                  decode=True)
            for chunk in self._bounded(stream, deadline, f"building {ref}", settings.timeout):
                if "error" in chunk:
                    detail = (chunk.get("errorDetail") or {}).get("message") or chunk["error"]
                    tail = "; ".join(log_tail[-3:])
                    raise BackendError(f"building {ref} failed: {str(detail).strip()}"
                                       + (f" (after: {tail})" if tail else ""))
                if "stream" in chunk:
                    pending += str(chunk["stream"])
                    *lines, pending = pending.split("\n")
                    for line in lines:
                        line = line.strip()
                        if line:
                            log_tail.append(line)
                            on_step(f"build: {line}")
                aux = chunk.get("aux")
                if isinstance(aux, dict) and aux.get("ID"):
                    image_id = aux["ID"]
        except BackendError:
            raise
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise BackendError(f"building {ref} failed: {explain(exc)}") from None
        if pending.strip():
            on_step(f"build: {pending.strip()}")
        if image_id is None:
            try:
                image_id = client.inspect_image(ref)["Id"]
            except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
                raise BackendError(f"built {ref} but cannot find it: {explain(exc)}") from None
        on_step(f"built {ref} ({image_id[:19]})")
        return image_id

    @staticmethod
    def _bounded(stream: Iterable[dict[str, Any]], deadline: float, what: str,
                 timeout: float) -> Iterable[dict[str, Any]]:
        for chunk in stream:
            yield chunk
            if time.monotonic() > deadline:
                close = getattr(stream, "close", None)
                if close:
                    close()  # the engine stops a build whose client went away
                raise BackendError(f"{what} did not finish in {timeout:.0f} s (build.timeout)")

    def _push(self, client: docker.APIClient, image: str, tag: str,
              auth: dict[str, str] | None, deadline: float, timeout: float,
              on_step: StepCallback, secret: str) -> str:
        ref = f"{image}:{tag}"
        registry, _ = split_image(image)
        where = registry or "Docker Hub (the image name has no registry host)"
        on_step(f"pushing {ref} to {where}")
        digest = None
        last_status = None
        try:
            stream = client.push(image, tag=tag, stream=True, decode=True, auth_config=auth)
            for chunk in self._bounded(stream, deadline, f"pushing {ref}", timeout):
                if "error" in chunk or "errorDetail" in chunk:
                    detail = (chunk.get("errorDetail") or {}).get("message") or chunk.get("error")
                    raise self._push_error(ref, where, str(detail), secret)
                aux = chunk.get("aux")
                if isinstance(aux, dict) and aux.get("Digest"):
                    digest = aux["Digest"]
                status = chunk.get("status")
                # Per-layer progress is noise; report each layer's final state once.
                if status and status not in ("Pushing", "Preparing", "Waiting") \
                        and status != last_status:
                    last_status = status
                    layer = chunk.get("id")
                    on_step(f"push: {layer + ': ' if layer else ''}{status}")
        except BackendError:
            raise
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise self._push_error(ref, where, explain(exc), secret) from None
        if digest is None:
            digest = self._repo_digest(client, image, ref)
        return digest

    @staticmethod
    def _push_error(ref: str, where: str, detail: str, secret: str) -> BackendError:
        if secret:
            detail = detail.replace(secret, "***")
        low = detail.lower()
        if any(m in low for m in UNREACHABLE):
            return BackendError(
                f"cannot push {ref}: the registry {where} is unreachable ({detail})",
                hint="check the registry is running and listening there, that the registry "
                     "host:port in the service's `image` is right, and (for plain HTTP "
                     "registries outside 127.0.0.0/8) the engine's insecure-registries")
        if any(m in low for m in ("unauthorized", "authentication required", "denied",
                                  "no basic auth credentials")):
            return BackendError(
                f"cannot push {ref}: the registry {where} refused the credentials ({detail})",
                hint="check the variables named by build.username_env / build.password_env")
        return BackendError(f"cannot push {ref} to {where}: {detail}")

    @staticmethod
    def _repo_digest(client: docker.APIClient, image: str, ref: str) -> str:
        try:
            digests = client.inspect_image(ref).get("RepoDigests") or []
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise BackendError(f"pushed {ref} but cannot read its digest: {explain(exc)}") from None
        for entry in digests:
            repo, _, digest = entry.partition("@")
            if repo == image and re.match(r"^sha256:[0-9a-f]{64}$", digest):
                return digest
        raise BackendError(f"pushed {ref} but the engine reports no digest for {image}")
