"""Immutable image references: how deploybot names the bytes that ran, and how it gets them back.

Tags are mutable (`v2` can be pushed again), so what a deployment records as "the bytes that
ran" is one of:

- a repository digest, `repository@sha256:…`: the registry serves exactly these bytes for it;
  an engine pulls it by digest when it does not hold it;
- the engine's image id, `sha256:…` (the image's config digest), when no registry digest is
  known (an image built or loaded on the host and never pushed or pulled): only that host has
  these bytes, nothing can fetch them again.

Both forms are accepted by the Docker engine wherever an image reference is (`docker run`,
`docker image inspect`), by Compose v2 as a service's `image:` and by the kubelet's Docker shim
as a container's `image:` (measured; see the backends).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Iterable

from bot.errors import BackendError
from bot.ports import StepCallback

if TYPE_CHECKING:  # imported by registry_has: `status` loads this module and asks no registry
    import httpx

IMAGE_ID = re.compile(r"^sha256:[0-9a-f]{64}$")
DIGEST_REF = re.compile(r"^(?P<repo>[^@\s]+)@(?P<digest>sha256:[0-9a-f]{64})$")
MANIFEST_TYPES = ", ".join((
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
))


def is_image_id(ref: str | None) -> bool:
    return bool(ref) and IMAGE_ID.match(ref) is not None


def split_digest(ref: str | None) -> tuple[str, str] | None:
    """("repository", "sha256:…") of `repository@sha256:…`, else None."""
    m = DIGEST_REF.match(ref or "")
    return (m.group("repo"), m.group("digest")) if m else None


def is_pinned(image: str | None) -> bool:
    """An image reference that names bytes, not a tag: `repo@sha256:…` or `sha256:<id>`."""
    return bool(image) and ("@" in image or is_image_id(image))


def repository(image: str) -> str:
    """`registry:5000/team/web:v2` or `…/web@sha256:…` -> `registry:5000/team/web`."""
    name = image.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > slash else name


def _familiar(repo: str) -> str:
    for prefix in ("docker.io/library/", "docker.io/", "index.docker.io/library/",
                   "index.docker.io/"):
        if repo.startswith(prefix):
            return repo[len(prefix):]
    return repo


def best_ref(image_id: str, repo_digests: Iterable[str] | None, prefer: str | None) -> str:
    """The immutable reference to record for an image: a repository digest (the configured
    repository's first, when the image has several), else the image id."""
    digests = [d for d in (repo_digests or []) if split_digest(d)]
    if prefer:
        wanted = _familiar(repository(prefer))
        for d in digests:
            if _familiar(split_digest(d)[0]) == wanted:  # type: ignore[index]
                return d
    return digests[0] if digests else image_id


def from_status_image_id(value: str | None) -> str | None:
    """A pod's `containerStatuses[].imageID` as an image reference.

    dockershim: `docker-pullable://repo@sha256:…` (a registry digest is known) or
    `docker://sha256:<id>` (a local image); CRI runtimes: `repo@sha256:…` or `sha256:…`.
    """
    if not value:
        return None
    ref = value.split("://", 1)[1] if "://" in value else value
    return ref if (split_digest(ref) or is_image_id(ref)) else None


class SeenBytes:
    """What each version was seen running as, by this process (running_image fills `_seen`):
    the by-hand rollback steps name those bytes instead of a tag that may have moved."""

    _seen: dict[str, str]

    def _known_bytes(self, version: str) -> str | None:
        if version not in self._seen:
            try:
                if self.current_version() == version:  # type: ignore[attr-defined]
                    self.running_image()  # type: ignore[attr-defined]
            except BackendError:
                return None
        return self._seen.get(version)


def gone_hint(version: str) -> str:
    return (f"the bytes {version} ran as were removed; deploy {version} again as a new "
            f"deployment (rebuild or pull the image; check what its tag names now), or roll "
            "back to another version")


# -- a Docker engine ------------------------------------------------------------------------------


def ensure_local(client: Any, ref: str, version: str, *, pull: str, on_step: StepCallback,
                 where: str = "this Docker host") -> str:
    """Make the pinned bytes `ref` present on the engine of `client`; never touches containers.

    An image id must be there already (nothing can fetch it again); a repository digest is
    pulled by digest when missing (unless `pull` is "never"). Returns the image id.
    BackendError says that the bytes of `version` are gone, and what to do.
    """
    import docker.errors
    import requests.exceptions

    from backends.deploy.docker import explain

    try:
        try:
            image = client.images.get(ref)
            on_step(f"the bytes {version} ran as are present: {ref}")
            return image.id
        except docker.errors.ImageNotFound:
            pass
        if is_image_id(ref):
            raise BackendError(
                f"the bytes of {version} are gone: image {ref} is no longer on {where} (removed "
                "or pruned) and, never having been pushed, cannot be pulled again", hint=gone_hint(version))
        parts = split_digest(ref)
        if parts is None:
            raise BackendError(f"{ref} is not an immutable image reference")
        if pull == "never":
            raise BackendError(
                f"the bytes of {version} ({ref}) are not on {where} and pull: never forbids "
                "fetching them",
                hint="pull that digest by hand (docker pull REF) or set pull: missing")
        on_step(f"pulling the bytes {version} ran as: {ref}")
        try:
            image = client.images.pull(parts[0], tag=parts[1])
        except docker.errors.NotFound as exc:
            raise BackendError(
                f"the bytes of {version} are gone: {ref} is on neither {where} nor its registry "
                f"({explain(exc)})", hint=gone_hint(version)) from None
        on_step(f"pulled {ref}")
        return image.id
    except BackendError:
        raise
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        raise BackendError(f"cannot make the bytes of {version} ({ref}) present: "
                           f"{explain(exc)}") from None


def image_ref_of(client: Any, image_id: str, prefer: str | None) -> str:
    """What running_image records for a container's image id (docker SDK client)."""
    import docker.errors

    try:
        image = client.images.get(image_id)
    except docker.errors.ImageNotFound:  # removed by force while a container uses it
        return image_id
    return best_ref(image.id, image.attrs.get("RepoDigests"), prefer)


# -- a registry (for the Kubernetes backend: its nodes pull, the bot only asks) ---------------------


def _registry_and_name(repo: str) -> tuple[str, str]:
    first, _, rest = repo.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return first, rest
    return "registry-1.docker.io", repo if "/" in repo else f"library/{repo}"


def _loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return name in ("localhost", "[::1]") or name.startswith("127.")


def _bearer_token(client: httpx.Client, challenge: str) -> str | None:
    if not challenge.lower().startswith("bearer "):
        return None
    params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
    realm = params.pop("realm", None)
    if not realm:
        return None
    answer = client.get(realm, params=params)
    if answer.status_code != 200:
        return None
    body = answer.json()
    return body.get("token") or body.get("access_token")


def registry_has(ref: str, *, timeout: float = 10.0,
                 transport: httpx.BaseTransport | None = None) -> tuple[bool | None, str]:
    """Does the registry still serve `repo@sha256:…`? (True/False, how we know) or (None, why
    it could not be asked). Anonymous access only (with a registry's anonymous bearer token);
    HTTPS, and plain HTTP for loopback registries as the Docker engine allows."""
    parts = split_digest(ref)
    if parts is None:
        return None, f"{ref} is not a repository digest"
    host, name = _registry_and_name(parts[0])
    schemes = ["https", "http"] if _loopback(host) else ["https"]
    why = ""
    import httpx

    with httpx.Client(timeout=timeout, transport=transport, follow_redirects=True) as client:
        for scheme in schemes:
            url = f"{scheme}://{host}/v2/{name}/manifests/{parts[1]}"
            headers = {"Accept": MANIFEST_TYPES}
            try:
                answer = client.head(url, headers=headers)
                if answer.status_code == 401:
                    token = _bearer_token(client, answer.headers.get("www-authenticate", ""))
                    if token:
                        answer = client.head(url, headers={**headers,
                                                           "Authorization": f"Bearer {token}"})
            except httpx.HTTPError as exc:
                why = f"{scheme}://{host}: {type(exc).__name__}: {exc}"
                continue
            if answer.status_code == 200:
                return True, f"{host} serves {name}@{parts[1]}"
            if answer.status_code == 404:
                return False, f"{host} answered 404 for {name}@{parts[1]} (manifest unknown)"
            return None, f"{host} answered {answer.status_code}"
    return None, f"the registry is not reachable ({why})"
