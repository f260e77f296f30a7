"""Kubernetes Deployments through the official client: set image or apply, rollout, undo, history, scale.

How a deploy goes (the same steps `kubectl` takes, so an operator can follow along by hand):

1. `prepare` reads the Deployment (or parses the manifest) and changes nothing.
2. `deploy` sets the new image on the configured container (a strategic merge patch, like
   `kubectl set image`) or applies the manifest (server-side apply: create or patch), with the
   ticket in `kubernetes.io/change-cause`; then it waits like `kubectl rollout status`:
   observedGeneration caught up, all replicas updated and available, no old replicas left, and
   the Deployment's `progressDeadlineSeconds` not exceeded -- bounded by `rollout_timeout`.
   New pods that cannot start (CERTAIN_FAILURES: CrashLoopBackOff, ImagePullBackOff, ...) end
   the wait at once; `status()` then reports them as failing, and a progress deadline as
   final, so verification decides without waiting out `verify.timeout`.
3. **A rollout that fails or times out does not raise.** `deploy` reports it as a step and
   returns; `status()` then reports the service as not running (it is computed from the live
   Deployment and the readiness of the new ReplicaSet's pods), verification fails and the
   pipeline's automatic rollback runs `rollback()`, which gives the standard "rolled back" record
   with the reason. Only errors *before* the change took effect (API 401/403/404/409/422, the API
   server unreachable, a bad manifest) raise BackendError from `deploy`, and then nothing changed.
4. `rollback(v)` does what `kubectl rollout undo --to-revision=N` does: it finds the newest
   ReplicaSet of the Deployment whose pod template runs `image:v` and puts that template back
   (a JSON patch of `/spec/template`), so the controller scales that ReplicaSet up again and it
   becomes the newest revision with its own change-cause (as `rollout undo` keeps it);
   `history()` shows it. When no such revision is left, it sets the
   image instead. It waits for that rollout and raises BackendError when it does not complete.

The bytes, not the tag: `running_image()` reads `status.containerStatuses[].imageID` of the
service's container in the ready pods of the current ReplicaSet (they must agree):
`docker-pullable://repo@sha256:…` gives `repo@sha256:…`, `docker://sha256:<id>` (an image the
node has but no registry digest is known for) gives `sha256:<id>`. With `image=` (a rollback,
or a manual rollback to a version whose bytes were recorded), the pod template's image becomes
that reference and the template carries the annotation `io.deploybot/version: v`, so the
version is still known without a tag. A rollback ends with the pinned image in the template: the
old revision's template is put back with its image replaced (the controller then makes a new
ReplicaSet unless an old one already runs the pinned image). Measured with the kubelet v1.20
(dockershim) of the test cluster: `image: sha256:<id>` runs the local image with
imagePullPolicy Never or IfNotPresent (status shows `docker://sha256:<id>`), so no local tag is
needed; the id without `sha256:` is refused (InvalidImageName). `prepare` asks the registry
whether it still serves a pinned digest (anonymous HEAD of the manifest; 404 means the bytes are
gone and nothing is changed); an image id cannot be checked from here (the nodes hold it).

Health through the API server: a pod's HTTP port is usually not reachable from where the bot runs;
the API server's service proxy is, e.g. `https://127.0.0.1:6443/api/v1/namespaces/NS/services/
NAME:PORT/proxy/health`. That URL needs the bot's bearer token and the cluster's CA, which the
core's HttpProbe does not send yet (see deploy/kubernetes/README.md).
"""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Literal, Protocol

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from bot.clock import Clock, SystemClock
from bot.config import Service
from bot.errors import BackendError, ConfigError
from bot.models import BackendStatus
from bot.ports import StepCallback
from bot.redact import clip
from bot.validation import error_lines

from backends.deploy import pins

CHANGE_CAUSE = "kubernetes.io/change-cause"
REVISION = "deployment.kubernetes.io/revision"
HASH_LABEL = "pod-template-hash"
# On the pod template: the version a pinned image (digest or image id, no tag) is.
VERSION_ANNOTATION = "io.deploybot/version"
FIELD_MANAGER = "deploybot"
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
# What a manifest may hold: the kinds the Role in deploy/kubernetes/rbac.yaml lets the bot apply.
MANIFEST_KINDS = ("ConfigMap", "Service", "Deployment")


# -- settings -------------------------------------------------------------------------------------


class KubernetesBackendSettings(BaseModel):
    """`services.NAME.backend` with `kind: kubernetes`."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["kubernetes"] = "kubernetes"
    namespace: str = Field(default="default", pattern=DNS_LABEL, max_length=63)
    deployment: str | None = Field(default=None, pattern=DNS_SUBDOMAIN, max_length=253)  # default: the service name
    container: str | None = Field(default=None, pattern=DNS_LABEL, max_length=63)  # default: the only one
    manifest: str | None = None  # a YAML file (ConfigMap, Service, Deployment) applied on deploy
    kubeconfig: str | None = None  # default: $KUBECONFIG, then ~/.kube/config
    context: str | None = None  # default: the kubeconfig's current context
    in_cluster: bool = False  # use the pod's service account instead of a kubeconfig
    rollout_timeout: float = Field(default=300.0, gt=0, le=3600)  # like `rollout status --timeout`
    progress_deadline: int | None = Field(default=None, ge=1, le=3600)  # sets progressDeadlineSeconds
    timeout: float = Field(default=30.0, gt=0, le=300)  # per API call
    poll_interval: float = Field(default=1.0, gt=0, le=30)
    log_lines: int = Field(default=200, ge=1, le=10000)  # per pod, for logs()

    @field_validator("manifest", "kubeconfig")
    @classmethod
    def _non_empty(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("must not be empty")
        return v


def load_settings(service: str, settings: Service) -> KubernetesBackendSettings:
    """Validate the Kubernetes options of a service; ConfigError names each bad path."""
    backend = settings.backend
    raw = backend.model_dump() if isinstance(backend, BaseModel) else dict(backend)
    try:
        opts = KubernetesBackendSettings.model_validate(raw)
    except ValidationError as exc:
        lines = error_lines(exc, ("services", service, "backend"), messages={
            "string_pattern_mismatch":
                "not a valid Kubernetes name (lower case letters, digits and '-')"})
        raise ConfigError("\n".join(lines)) from None
    if opts.in_cluster and (opts.kubeconfig or opts.context):
        raise ConfigError(f"services.{service}.backend.in_cluster: cannot be combined with "
                          "kubeconfig/context", hint="use one or the other")
    return opts


# -- errors ---------------------------------------------------------------------------------------


def _api_message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if body:
        try:
            message = json.loads(body).get("message")
            if message:
                return str(message)
        except (ValueError, AttributeError):
            return clip(str(body), 300)
    return str(getattr(exc, "reason", "") or exc)


def explain(exc: BaseException, timeout: float | None = None) -> tuple[str, str]:
    """(what failed, what to do) for an error of the client, the API server or the kubeconfig."""
    from kubernetes.client.exceptions import ApiException
    from kubernetes.config.config_exception import ConfigException
    import urllib3.exceptions as u3

    if isinstance(exc, ApiException):
        status, message = exc.status, _api_message(exc)
        if status == 401:
            return (f"the API server rejected the bot's credentials (401 Unauthorized)",
                    "check the token/certificate in the kubeconfig")
        if status == 403:
            return (f"forbidden (403): {message}",
                    "the bot's account needs the Role in deploy/kubernetes/rbac.yaml")
        if status == 404:
            return f"not found (404): {message}", "check namespace and name in the service's backend settings"
        if status == 409:
            return f"conflict (409): {message}", "someone else changed it at the same time; try again"
        if status == 422:
            return f"rejected as invalid (422): {message}", "fix the manifest or settings"
        if status == 429 or (status or 0) >= 500:
            return f"the API server failed ({status}): {message}", "try again shortly"
        return f"the API server answered {status}: {message}", ""
    if isinstance(exc, u3.MaxRetryError) and exc.reason is not None:
        what, hint = explain(exc.reason, timeout)
        host = getattr(exc.pool, "host", None)
        return what.replace("the API server", f"the API server {host}" if host else "the API server", 1), hint
    if isinstance(exc, u3.SSLError):
        return (f"the TLS handshake with the API server failed ({exc})",
                "check the cluster's certificate-authority in the kubeconfig")
    # NewConnectionError subclasses ConnectTimeoutError in urllib3: test for it first.
    if isinstance(exc, (u3.NewConnectionError, ConnectionError, u3.ProtocolError)):
        return "the API server is not reachable", "is the cluster up? are kubeconfig and context right?"
    if isinstance(exc, (u3.ReadTimeoutError, u3.ConnectTimeoutError, TimeoutError)):
        limit = f" within {timeout:g} s" if timeout else ""
        return f"the API server did not answer{limit}", "check the cluster and the network"
    if isinstance(exc, u3.HTTPError):
        return f"the API server is not reachable ({exc})", "is the cluster up? are kubeconfig and context right?"
    if isinstance(exc, ConfigException):
        return f"cannot load the Kubernetes configuration: {exc}", "check kubeconfig/context/in_cluster"
    return f"{type(exc).__name__}: {exc}", ""


def is_not_found(exc: BaseException) -> bool:
    from kubernetes.client.exceptions import ApiException

    return isinstance(exc, ApiException) and exc.status == 404


# -- the API, as plain dicts ----------------------------------------------------------------------


class KubeApi(Protocol):
    """What the backend asks of the API server. Objects are plain JSON dicts."""

    def get_deployment(self, namespace: str, name: str) -> dict | None: ...
    def patch_deployment(self, namespace: str, name: str, patch: Any, content_type: str) -> dict: ...
    def apply(self, namespace: str, obj: dict) -> dict: ...
    def delete_deployment(self, namespace: str, name: str) -> None: ...
    def scale_deployment(self, namespace: str, name: str, replicas: int) -> None: ...
    def replica_sets(self, namespace: str, selector: str) -> list[dict]: ...
    def pods(self, namespace: str, selector: str) -> list[dict]: ...
    def events(self, namespace: str) -> list[dict]: ...
    def pod_log(self, namespace: str, pod: str, container: str, since_seconds: int,
                tail_lines: int) -> str: ...


class ClientKubeApi:
    """KubeApi over the official `kubernetes` client (raw JSON: no model (de)serialization quirks)."""

    def __init__(self, api_client: Any, timeout: float) -> None:
        from kubernetes import client

        self.api_client = api_client
        self.apps = client.AppsV1Api(api_client)
        self.core = client.CoreV1Api(api_client)
        self.timeout = timeout

    def _json(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        response = method(*args, _preload_content=False, _request_timeout=self.timeout, **kwargs)
        data = response.data
        return json.loads(data) if data else None

    def get_deployment(self, namespace: str, name: str) -> dict | None:
        try:
            return self._json(self.apps.read_namespaced_deployment, name, namespace)
        except Exception as exc:
            if is_not_found(exc):
                return None
            raise

    def patch_deployment(self, namespace: str, name: str, patch: Any, content_type: str) -> dict:
        return self._json(self.apps.patch_namespaced_deployment, name, namespace, patch,
                          _content_type=content_type)

    def apply(self, namespace: str, obj: dict) -> dict:
        name, kind = obj["metadata"]["name"], obj["kind"]
        method = {"Deployment": self.apps.patch_namespaced_deployment,
                  "Service": self.core.patch_namespaced_service,
                  "ConfigMap": self.core.patch_namespaced_config_map}[kind]
        return self._json(method, name, namespace, obj, field_manager=FIELD_MANAGER, force=True,
                          _content_type="application/apply-patch+yaml")

    def delete_deployment(self, namespace: str, name: str) -> None:
        self._json(self.apps.delete_namespaced_deployment, name, namespace)

    def scale_deployment(self, namespace: str, name: str, replicas: int) -> None:
        self._json(self.apps.patch_namespaced_deployment_scale, name, namespace,
                   {"spec": {"replicas": replicas}},
                   _content_type="application/merge-patch+json")

    def replica_sets(self, namespace: str, selector: str) -> list[dict]:
        return self._json(self.apps.list_namespaced_replica_set, namespace,
                          label_selector=selector)["items"]

    def pods(self, namespace: str, selector: str) -> list[dict]:
        return self._json(self.core.list_namespaced_pod, namespace, label_selector=selector)["items"]

    def events(self, namespace: str) -> list[dict]:
        return self._json(self.core.list_namespaced_event, namespace)["items"]

    def pod_log(self, namespace: str, pod: str, container: str, since_seconds: int,
                tail_lines: int) -> str:
        response = self.core.read_namespaced_pod_log(
            pod, namespace, container=container, since_seconds=since_seconds,
            tail_lines=tail_lines, timestamps=True, _preload_content=False,
            _request_timeout=self.timeout)
        return response.data.decode("utf-8", "replace")


def connect(opts: KubernetesBackendSettings) -> ClientKubeApi:
    """An API client for the configured cluster: in-cluster, or a kubeconfig file and context."""
    import urllib3
    from kubernetes import client, config

    configuration = client.Configuration()
    if opts.in_cluster:
        config.load_incluster_config(client_configuration=configuration)
    else:
        path = opts.kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
        path = os.path.expanduser(path.split(os.pathsep)[0])
        if not Path(path).is_file():
            raise BackendError(f"Kubernetes: cannot reach the API: no kubeconfig at {path}",
                               hint="set backend.kubeconfig or KUBECONFIG, or use in_cluster: true")
        # persist_config=False: the bot never writes refreshed credentials into the file.
        config.load_kube_config(config_file=path, context=opts.context, persist_config=False,
                                client_configuration=configuration)
    # One quick retry of a refused connection; never re-send after a read timeout, so one call
    # takes at most about `timeout` seconds.
    configuration.retries = urllib3.util.Retry(total=1, connect=1, read=0, status=0, redirect=0)
    return ClientKubeApi(client.ApiClient(configuration), opts.timeout)


# -- reading Deployments the way kubectl does -----------------------------------------------------


@dataclass
class RolloutState:
    done: bool
    failed: bool
    message: str


@dataclass
class Revision:
    """One line of `kubectl rollout history`, plus what the bot knows about it."""

    revision: int
    version: str | None
    image: str | None
    change_cause: str
    replica_set: str
    replicas: int
    ready: int


@dataclass
class PodInfo:
    name: str
    phase: str
    ready: bool
    version: str | None
    replica_set: str
    restarts: int
    reason: str = ""  # why it is not ready, in the API's words
    terminating: bool = False  # being deleted (an old ReplicaSet's pod after a rollout)


def _meta(obj: dict) -> dict:
    return obj.get("metadata") or {}


def rollout_state(dep: dict) -> RolloutState:
    """`kubectl rollout status` for one Deployment object."""
    meta, spec, status = _meta(dep), dep.get("spec") or {}, dep.get("status") or {}
    name = meta.get("name", "?")
    if meta.get("generation", 0) > status.get("observedGeneration", 0):
        return RolloutState(False, False, "waiting for the Deployment spec update to be observed")
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Progressing" and cond.get("reason") == "ProgressDeadlineExceeded":
            return RolloutState(False, True, f"deployment {name} exceeded its progress deadline "
                                             f"({spec.get('progressDeadlineSeconds', 600)} s)")
    want = spec.get("replicas", 1)
    updated = status.get("updatedReplicas", 0)
    total = status.get("replicas", 0)
    available = status.get("availableReplicas", 0)
    if spec.get("paused"):
        return RolloutState(False, True, f"deployment {name} is paused (kubectl rollout resume)")
    if updated < want:
        return RolloutState(False, False, f"{updated} of {want} new replicas have been updated")
    if total > updated:
        return RolloutState(False, False, f"{total - updated} old replicas are pending termination")
    if available < updated:
        return RolloutState(False, False, f"{available} of {updated} updated replicas are available")
    return RolloutState(True, False, f"deployment {name} successfully rolled out")


def revision_of(obj: dict) -> int:
    try:
        return int((_meta(obj).get("annotations") or {}).get(REVISION, 0))
    except ValueError:
        return 0


def tag_of(image: str | None) -> str | None:
    """The version a container image reference names: its tag (a digest is shown as is)."""
    if not image:
        return None
    if "@" in image:
        return image.split("@", 1)[1]
    last = image.rsplit("/", 1)[-1]
    return last.rsplit(":", 1)[1] if ":" in last else "latest"


def version_in(template_or_pod: dict, image: str | None) -> str | None:
    """The version a pod template (or a pod) runs: its image's tag; for a pinned image (a
    digest or an image id) the `io.deploybot/version` annotation deploybot wrote beside it."""
    if pins.is_pinned(image):
        annotated = (_meta(template_or_pod).get("annotations") or {}).get(VERSION_ANNOTATION)
        if annotated:
            return annotated
    return tag_of(image)


def pod_ready(pod: dict) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


def pod_problem(pod: dict) -> str:
    """Why a pod is not ready: a waiting container's reason, a termination, or the condition."""
    status = pod.get("status") or {}
    for cs in status.get("containerStatuses") or []:
        state = cs.get("state") or {}
        if "waiting" in state:
            w = state["waiting"]
            return f"{w.get('reason', 'waiting')}" + (f": {w['message']}" if w.get("message") else "")
        if "terminated" in state:
            t = state["terminated"]
            return f"terminated ({t.get('reason', '')}, exit code {t.get('exitCode')})"
        if "running" in state and not cs.get("ready"):
            return "running but not ready (readiness probe not passing)"
    for cond in status.get("conditions") or []:
        if cond.get("status") != "True" and cond.get("message"):
            return f"{cond.get('type')}: {cond['message']}"
    return status.get("phase", "Pending")


# Waiting reasons that say a pod of this version will not become ready by waiting longer: the
# kubelet already retried (the BackOff reasons) or retrying cannot help. ErrImagePull on its own
# is a first attempt (a registry blip) and is not here; its retry turns into ImagePullBackOff.
CERTAIN_FAILURES = frozenset({"CrashLoopBackOff", "ImagePullBackOff", "InvalidImageName",
                              "CreateContainerConfigError", "CreateContainerError",
                              "RunContainerError", "ErrImageNeverPull"})


def pod_failure(pod: dict) -> str:
    """The certain failure of a pod (one of CERTAIN_FAILURES, in the API's words), else ""."""
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in CERTAIN_FAILURES:
            return f"{_meta(pod).get('name')}: {pod_problem(pod)}"
    return ""


def strip_template(template: dict) -> dict:
    """A ReplicaSet's pod template as a Deployment template (without pod-template-hash)."""
    out = json.loads(json.dumps(template))
    labels = (out.get("metadata") or {}).get("labels") or {}
    labels.pop(HASH_LABEL, None)
    return out


def _default_protocols(obj: dict) -> None:
    """Fill in `protocol: TCP` where a manifest leaves it out, as the API server would.

    Server-side apply before Kubernetes 1.21 rejects port lists whose items omit `protocol`
    (it is part of their merge key) with "associative list with keys has an element that omits
    key field"; newer servers default it themselves, so this changes nothing there.
    """
    spec = obj.get("spec") or {}
    ports = list(spec.get("ports") or []) if obj.get("kind") == "Service" else []
    pod = ((spec.get("template") or {}).get("spec") or {}) if obj.get("kind") == "Deployment" else {}
    for container in (pod.get("containers") or []) + (pod.get("initContainers") or []):
        ports += container.get("ports") or []
    for port in ports:
        if isinstance(port, dict):
            port.setdefault("protocol", "TCP")


def _selector(dep: dict) -> str:
    labels = ((dep.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
    if not labels:
        raise BackendError(f"Deployment {_meta(dep).get('name')} has no matchLabels selector",
                           hint="deploybot needs spec.selector.matchLabels to find its pods")
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def _owned_by(obj: dict, owner: dict) -> bool:
    uid = _meta(owner).get("uid")
    return any(ref.get("uid") == uid for ref in _meta(obj).get("ownerReferences") or [])


# -- the backend ----------------------------------------------------------------------------------


@dataclass
class KubernetesBackend(pins.SeenBytes):
    """DeployBackend for one Deployment (one container of it) in one namespace."""

    service: str
    environment: str
    settings: Service
    api: KubeApi | None = None  # injected in tests; built from the kubeconfig on first use
    clock: Clock = field(default_factory=SystemClock)
    method: str = "Kubernetes"

    def __post_init__(self) -> None:
        self.opts = load_settings(self.service, self.settings)
        self.image = self.settings.image
        self.namespace = self.opts.namespace
        self.name = self.opts.deployment or self.service
        self.where = f"Deployment {self.namespace}/{self.name}"
        self._seen: dict[str, str] = {}  # version -> the bytes running_image saw it run as
        self._served: dict[str, bool] = {}  # repo@digest -> its registry serves it

    # -- plumbing -------------------------------------------------------------------------------

    def _api(self) -> KubeApi:
        if self.api is None:
            try:
                self.api = connect(self.opts)
            except BackendError:
                raise
            except Exception as exc:
                what, hint = explain(exc, self.opts.timeout)
                raise BackendError(f"Kubernetes: {what}", hint=hint) from None
        return self.api

    def _call(self, doing: str, fn: Callable[..., Any], *args: Any, after: str = "") -> Any:
        """Run one API call; any failure becomes a BackendError saying what and what next."""
        try:
            return fn(*args)
        except BackendError:
            raise
        except Exception as exc:
            what, hint = explain(exc, self.opts.timeout)
            raise BackendError(f"Kubernetes: cannot {doing}: {what}{after}", hint=hint) from None

    def _ref(self, version: str) -> str:
        return f"{self.image}:{version}"

    def _deployment(self, required: bool = True) -> dict | None:
        dep = self._call(f"read {self.where}", self._api().get_deployment, self.namespace, self.name)
        if dep is None and required:
            hint = ("create it first, or set backend.manifest to have deploybot apply one"
                    if not self.opts.manifest else "")
            raise BackendError(f"Kubernetes: {self.where} does not exist", hint=hint)
        return dep

    def _container(self, dep_or_template: dict) -> dict:
        spec = dep_or_template.get("spec") or {}
        template = spec.get("template", dep_or_template)
        containers = (template.get("spec") or {}).get("containers") or []
        if self.opts.container:
            for c in containers:
                if c.get("name") == self.opts.container:
                    return c
            raise BackendError(f"Kubernetes: {self.where} has no container {self.opts.container!r}",
                               hint="known: " + ", ".join(c.get("name", "?") for c in containers))
        if len(containers) == 1:
            return containers[0]
        for c in containers:
            if c.get("name") == self.service:
                return c
        raise BackendError(f"Kubernetes: {self.where} has {len(containers)} containers; "
                           "say which one gets the image",
                           hint=f"set services.{self.service}.backend.container")

    @staticmethod
    def _template(dep_or_template: dict) -> dict:
        spec = dep_or_template.get("spec") or {}
        return spec.get("template", dep_or_template)

    def _version_of(self, obj: dict) -> str | None:
        try:
            return version_in(self._template(obj), self._container(obj).get("image"))
        except BackendError:
            return None

    def _runs_version(self, template: dict, version: str) -> bool:
        """Does this pod template run `version` (its tag, or its pinned bytes annotated so)?"""
        try:
            image = self._container(template).get("image")
        except BackendError:
            return False
        if pins.is_pinned(image):
            return version_in(template, image) == version
        return image == self._ref(version)

    def _pin(self, template: dict, version: str, image: str) -> None:
        """Make a pod template run the bytes `image`, still known as `version`."""
        self._container(template)["image"] = image
        meta = template.setdefault("metadata", {})
        meta["annotations"] = {**(meta.get("annotations") or {}), VERSION_ANNOTATION: version}

    def _set_image_patch(self, container: str, version: str, image: str, cause: str) -> dict:
        """Like `kubectl set image`, plus the version annotation (a strategic merge patch)."""
        return {"metadata": {"annotations": {CHANGE_CAUSE: cause}},
                "spec": {"template": {
                    "metadata": {"annotations": {VERSION_ANNOTATION: version}},
                    "spec": {"containers": [{"name": container, "image": image}]}}}}

    def _replica_sets(self, dep: dict) -> list[dict]:
        items = self._call(f"list the ReplicaSets of {self.where}", self._api().replica_sets,
                           self.namespace, _selector(dep))
        return sorted((rs for rs in items if _owned_by(rs, dep)), key=revision_of)

    def _new_replica_set(self, dep: dict, sets: list[dict]) -> dict | None:
        """The ReplicaSet of the Deployment's current template (same revision number)."""
        rev = revision_of(dep)
        for rs in sets:
            if rev and revision_of(rs) == rev:
                return rs
        return None

    def _pods(self, dep: dict) -> list[dict]:
        return self._call(f"list the pods of {self.where}", self._api().pods,
                          self.namespace, _selector(dep))

    def _kubectl(self, *args: str) -> str:
        base = ["kubectl"]
        if self.opts.kubeconfig:
            base += ["--kubeconfig", self.opts.kubeconfig]
        if self.opts.context:
            base += ["--context", self.opts.context]
        return shlex.join([*base, "--namespace", self.namespace, *args])

    # -- waiting ----------------------------------------------------------------------------------

    def wait_for_rollout(self, on_step: StepCallback, timeout: float | None = None) -> RolloutState:
        """Poll until the rollout completes, fails (progress deadline) or `timeout` passes."""
        timeout = self.opts.rollout_timeout if timeout is None else timeout
        deadline = self.clock.monotonic() + timeout
        last_message = ""
        while True:
            dep = None
            try:
                dep = self._deployment()
                state = rollout_state(dep)
            except BackendError as exc:  # a blip while waiting is not a verdict yet
                state = RolloutState(False, False, str(exc))
            if state.message != last_message:
                on_step(f"rollout: {state.message}")
                last_message = state.message
            if state.done or state.failed:
                return state
            # Until the controller has seen the new template, the revision still names the
            # ReplicaSet being left (after an undo: the failing one), so its pods prove nothing.
            observed = dep is not None and ((dep.get("status") or {}).get("observedGeneration") or 0) \
                >= (_meta(dep).get("generation") or 0)
            failures = self._certain_failures(dep) if observed else []
            if failures:
                on_step(f"rollout: failed: {'; '.join(failures[:3])}")
                return RolloutState(False, True, f"pods of the new ReplicaSet cannot start: "
                                                 f"{'; '.join(failures[:3])}")
            if self.clock.monotonic() >= deadline:
                return RolloutState(False, True, f"rollout not complete after {timeout:g} s "
                                                 f"({state.message})")
            self.clock.sleep(min(self.opts.poll_interval,
                                 max(0.05, deadline - self.clock.monotonic())))

    def diagnose(self) -> str:
        """Why the newest pods are not ready: their states and the latest warning events."""
        try:
            dep = self._deployment()
            sets = self._replica_sets(dep)
            new = self._new_replica_set(dep, sets)
            every = self._pods(dep)
            pods = [p for p in every if new is None or _owned_by(p, new)]
            # Only the new ReplicaSet's own, and not a kind the old pods show too (a node's
            # MissingClusterDNS): those are not why this version fails.
            names = {("Pod", _meta(p).get("name")) for p in pods}
            if new is not None:
                names.add(("ReplicaSet", _meta(new).get("name")))
            old = {("Pod", _meta(p).get("name")) for p in every} - names
            shared = {line.split()[1] for line in self._event_lines(old, 50)
                      if line.startswith("Warning ")} if old else set()
            warnings = [e for e in self._event_lines(names, 50)
                        if e.startswith("Warning ") and e.split()[1] not in shared][-3:]
        except BackendError as exc:
            return f"(could not look at the pods: {exc})"
        parts = [f"{_meta(p).get('name')}: {pod_problem(p)}" for p in pods if not pod_ready(p)][:3]
        return "; ".join(parts + warnings) or "no pod problems reported"

    def _new_pods(self, dep: dict) -> list[dict]:
        new = self._new_replica_set(dep, self._replica_sets(dep))
        return [p for p in self._pods(dep) if new is not None and _owned_by(p, new)
                and not _meta(p).get("deletionTimestamp")]

    def _certain_failures(self, dep: dict) -> list[str]:
        """Pods of the new ReplicaSet that will not become ready by waiting (a read blip: none)."""
        try:
            return [f for f in map(pod_failure, self._new_pods(dep)) if f]
        except BackendError:
            return []

    # -- DeployBackend ----------------------------------------------------------------------------

    def current_version(self) -> str | None:
        dep = self._deployment(required=False)
        return self._version_of(dep) if dep else None

    def running_image(self) -> str | None:
        """The bytes the ready pods of the current ReplicaSet run (their container's imageID);
        None when nothing runs. BackendError when those pods disagree."""
        dep = self._deployment(required=False)
        if dep is None:
            return None
        name = self._container(dep).get("name")
        new = self._new_replica_set(dep, self._replica_sets(dep))
        if new is None:
            return None
        pods = [p for p in self._pods(dep)
                if _owned_by(p, new) and not _meta(p).get("deletionTimestamp")]

        def status_of(pod: dict) -> dict:
            return next((cs for cs in (pod.get("status") or {}).get("containerStatuses") or []
                         if cs.get("name") == name), {})

        # the ready pods; while none is ready (a failed rollout), the containers that run
        chosen = [p for p in pods if pod_ready(p)] or \
                 [p for p in pods if "running" in (status_of(p).get("state") or {})]
        found: dict[str, list[str]] = {}
        for pod in chosen:
            ref = pins.from_status_image_id(status_of(pod).get("imageID"))
            if ref:
                spec = next((c.get("image") for c in (pod.get("spec") or {}).get("containers") or []
                             if c.get("name") == name), None)
                found.setdefault(self._own_repository(ref, spec), []).append(
                    _meta(pod).get("name", "?"))
        if len(found) > 1:
            raise BackendError(
                f"Kubernetes: the pods of {self.where} (revision {revision_of(dep)}) run different "
                "images: " + "; ".join(f"{ref} ({', '.join(names)})"
                                       for ref, names in sorted(found.items())),
                hint="a tag was pushed again while nodes pulled it; pin the image by digest or "
                     f"restart the pods ({self._kubectl('rollout', 'restart', 'deployment/' + self.name)})")
        if not found:
            return None
        ref = next(iter(found))
        version = self._version_of(dep)
        if version:
            self._seen[version] = ref
        return ref

    def _own_repository(self, ref: str, spec_image: str | None) -> str:
        """The Docker shim reports the image's *first* registry digest, which may be of another
        repository the same image was pushed to (even one gone since). When the pod's own
        repository serves the same digest (the same manifest pushed there), record that one."""
        parts = pins.split_digest(ref)
        if parts is None or not spec_image:
            return ref
        pinned = pins.split_digest(spec_image)
        if pinned:  # the pod asked for these very bytes by digest: its own name for them
            return spec_image if pinned[1] == parts[1] else ref
        if pins.is_image_id(spec_image):
            return ref
        own = pins.repository(spec_image)
        if own == parts[0]:
            return ref
        mine = f"{own}@{parts[1]}"
        if mine not in self._served:
            self._served[mine] = pins.registry_has(mine, timeout=self.opts.timeout)[0] is True
        return mine if self._served[mine] else ref

    def prepare(self, version: str, on_step: StepCallback, *, image: str | None = None) -> None:
        if image:
            self._check_pin(version, image, on_step)
        if self.opts.manifest:
            objects = self._manifest(version, image)
            on_step(f"manifest {self.opts.manifest}: " + ", ".join(
                f"{o['kind']}/{o['metadata']['name']}" for o in objects))
        dep = self._deployment(required=not self.opts.manifest)
        if dep is None:
            on_step(f"{self.where} does not exist yet; the manifest will create it")
            return
        if (dep.get("spec") or {}).get("paused"):
            raise BackendError(f"Kubernetes: {self.where} is paused; nothing changed",
                               hint=f"resume it first: {self._kubectl('rollout', 'resume', 'deployment/' + self.name)}")
        container = self._container(dep)
        state = rollout_state(dep)
        on_step(f"{self.where} runs {self._version_of(dep)} (revision {revision_of(dep)}, "
                f"container {container.get('name')}): {state.message}")
        policy = container.get("imagePullPolicy", "default")
        if image and pins.is_image_id(image) and policy == "Always":
            raise BackendError(
                f"Kubernetes: the bytes of {version} are the local image {image}, which a node "
                f"cannot pull, but container {container.get('name')} has imagePullPolicy "
                "Always; nothing changed", hint="set imagePullPolicy: IfNotPresent")
        if not image:
            on_step(f"the nodes pull {self._ref(version)} (imagePullPolicy {policy}); not "
                    "checked before the rollout")

    def _check_pin(self, version: str, image: str, on_step: StepCallback) -> None:
        """Are the pinned bytes still to be had? A digest: ask its registry; an id: only the
        nodes know (said, not checked)."""
        if pins.is_image_id(image):
            on_step(f"the bytes of {version} are the image {image}, which only the nodes that "
                    "ran it hold (never pushed: nothing can pull it); not checked from here")
            return
        if not pins.split_digest(image):
            raise BackendError(f"Kubernetes: {image} is not an immutable image reference")
        known, how = pins.registry_has(image, timeout=self.opts.timeout)
        if known is False:
            raise BackendError(f"Kubernetes: the bytes of {version} are gone: {how}; nothing "
                               "changed", hint=pins.gone_hint(version))
        if known:
            on_step(f"the bytes of {version}: {image} ({how}); the nodes pull it by digest")
        else:
            on_step(f"the bytes of {version}: {image}; could not ask the registry ({how}): the "
                    "nodes pull it by digest, not checked before the rollout")

    def _manifest(self, version: str, image: str | None = None) -> list[dict]:
        """The manifest's objects, ConfigMaps and Services first, the Deployment set to `version`."""
        path = self.opts.manifest
        assert path
        try:
            docs = [d for d in yaml.safe_load_all(Path(path).read_text()) if d]
        except OSError as exc:
            raise BackendError(f"Kubernetes: cannot read manifest {path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise BackendError(f"Kubernetes: manifest {path} is not valid YAML: {exc}") from None
        objects, found = [], None
        for n, doc in enumerate(docs, 1):
            where = f"manifest {path}, document {n}"
            if not isinstance(doc, dict) or not _meta(doc).get("name") or not doc.get("kind"):
                raise BackendError(f"Kubernetes: {where}: needs kind and metadata.name")
            if doc["kind"] not in MANIFEST_KINDS:
                raise BackendError(f"Kubernetes: {where}: kind {doc['kind']} is not applied by "
                                   f"deploybot", hint="allowed: " + ", ".join(MANIFEST_KINDS))
            ns = _meta(doc).get("namespace", self.namespace)
            if ns != self.namespace:
                raise BackendError(f"Kubernetes: {where}: namespace {ns} is not the service's "
                                   f"namespace {self.namespace}")
            doc = json.loads(json.dumps(doc))
            doc["metadata"]["namespace"] = self.namespace
            doc.setdefault("apiVersion", "apps/v1" if doc["kind"] == "Deployment" else "v1")
            if doc["kind"] == "Deployment" and doc["metadata"]["name"] == self.name:
                found = doc
            objects.append(doc)
        if found is None:
            raise BackendError(f"Kubernetes: manifest {path} has no Deployment {self.name}")
        for doc in objects:
            _default_protocols(doc)
        template = self._template(found)
        self._pin(template, version, image or self._ref(version))
        if self.opts.progress_deadline:
            found.setdefault("spec", {})["progressDeadlineSeconds"] = self.opts.progress_deadline
        return sorted(objects, key=lambda o: MANIFEST_KINDS.index(o["kind"]))

    def deploy(self, version: str, *, ticket_id: str, on_step: StepCallback,
               image: str | None = None) -> None:
        ref = image or self._ref(version)
        cause = f"deploybot {ticket_id}: {self._ref(version)}" + (f" as {image}" if image else "")
        dep = self._deployment(required=not self.opts.manifest)
        before = self._version_of(dep) if dep else None
        serving = f"{before} is still serving" if before else "nothing was running before"
        unchanged = f"; nothing changed, {serving}"
        if dep and (dep.get("spec") or {}).get("paused"):
            raise BackendError(f"Kubernetes: {self.where} is paused{unchanged}")
        if self.opts.manifest:
            applied: list[str] = []
            for obj in self._manifest(version, image):
                label = f"{obj['kind']} {self.namespace}/{obj['metadata']['name']}"
                if obj["kind"] == "Deployment":
                    obj["metadata"].setdefault("annotations", {})[CHANGE_CAUSE] = cause
                after = (f"; {serving}" +
                         (f" (already applied: {', '.join(applied)})" if applied else ""))
                self._call(f"apply {label}", self._api().apply, self.namespace, obj, after=after)
                applied.append(label)
                on_step(f"applied {label}")
        else:
            container = self._container(dep)
            patch: dict[str, Any] = self._set_image_patch(container["name"], version, ref, cause)
            if self.opts.progress_deadline:
                patch["spec"]["progressDeadlineSeconds"] = self.opts.progress_deadline
            self._call(f"set the image of {self.where}", self._api().patch_deployment,
                       self.namespace, self.name, patch, "application/strategic-merge-patch+json",
                       after=unchanged)
            on_step(f"{self.where}: container {container['name']} set to {ref} "
                    f"(like `kubectl set image`)")
        state = self.wait_for_rollout(on_step)
        if state.done:
            on_step(f"rollout of {version} complete")
            return
        # Not raising on purpose: status() now reports not running, verification fails and the
        # pipeline's automatic rollback undoes the rollout, with the standard record.
        on_step(f"rollout of {version} FAILED: {state.message}; {self.diagnose()}. "
                f"Verification will fail and the automatic rollback will undo it")

    def rollback(self, to_version: str | None, on_step: StepCallback, *,
                 image: str | None = None) -> None:
        dep = self._deployment(required=to_version is not None)
        if to_version is None:
            if dep is not None:
                on_step(f"deleting {self.where} (nothing ran before it)")
                self._call(f"delete {self.where}", self._api().delete_deployment,
                           self.namespace, self.name)
            return
        assert dep is not None
        ref = self._ref(to_version)
        pinned = f" pinned to {image}" if image else ""
        current_rev = revision_of(dep)
        older = [rs for rs in reversed(self._replica_sets(dep)) if revision_of(rs) != current_rev]

        def template_of(rs: dict) -> dict:
            return (rs.get("spec") or {}).get("template") or {}

        def image_of(template: dict) -> str | None:
            try:
                return self._container(template).get("image")
            except BackendError:
                return None

        # An old revision that runs the pinned bytes already is put back as it is (its
        # ReplicaSet scales up again); else the newest revision of `to_version`, pinned.
        target = next((rs for rs in older if image and image_of(template_of(rs)) == image and
                       self._runs_version(template_of(rs), to_version)), None)
        target = target or next((rs for rs in older
                                 if self._runs_version(template_of(rs), to_version)), None)
        annotations = dict(_meta(dep).get("annotations") or {})
        if target is not None:
            rev = revision_of(target)
            template = strip_template(template_of(target))
            if image:
                self._pin(template, to_version, image)
            # Like `kubectl rollout undo`: the revision comes back with its own change-cause, so
            # the history says who deployed that version and why (the step says it was an undo).
            cause = (_meta(target).get("annotations") or {}).get(CHANGE_CAUSE)
            if cause and image and image_of(template_of(target)) != image:
                cause += f" as {image}"  # the same words deploy uses for a pinned image
            if cause:
                annotations[CHANGE_CAUSE] = cause
            else:
                annotations.pop(CHANGE_CAUSE, None)
            patch = [
                {"op": "replace", "path": "/spec/template", "value": template},
                {"op": "replace", "path": "/metadata/annotations", "value": annotations},
            ]
            on_step(f"rolling {self.where} back to revision {rev} ({to_version}) like "
                    f"`kubectl rollout undo --to-revision={rev}`{pinned}")
            self._call(f"roll back {self.where}", self._api().patch_deployment, self.namespace,
                       self.name, patch, "application/json-patch+json")
        elif self._version_of(dep) == to_version and \
                (image is None or image_of(self._template(dep)) == image):
            on_step(f"{self.where} already has {to_version} in its template{pinned}")
        else:
            container = self._container(dep)
            on_step(f"no revision of {self.where} runs {to_version} any more; setting the image "
                    f"to {image or ref}")
            patch2 = self._set_image_patch(container["name"], to_version, image or ref,
                                           f"deploybot: rollback to {ref}{pinned}")
            self._call(f"set the image of {self.where}", self._api().patch_deployment,
                       self.namespace, self.name, patch2, "application/strategic-merge-patch+json")
        state = self.wait_for_rollout(on_step)
        if not state.done:
            raise BackendError(f"Kubernetes: rolled {self.where} back to {to_version} but its "
                               f"rollout did not complete: {state.message}; {self.diagnose()}",
                               hint=f"look: {self._kubectl('describe', 'deployment/' + self.name)}")
        on_step(f"{self.where} is back on {to_version}{pinned}")

    def finalize(self, on_step: StepCallback) -> None:
        """Nothing to drop: old ReplicaSets stay as rollout history (revisionHistoryLimit)."""

    def status(self) -> BackendStatus:
        """Running only when the rollout is complete and the new ReplicaSet's pods are all ready.
        An API that cannot be read raises BackendError, as the Docker backend's engine does: "not
        running, no version" would read as a first deployment and pass the health check."""
        dep = self._deployment(required=False)
        if dep is None:
            return BackendStatus(False, None, f"no {self.where}")
        version = self._version_of(dep)
        state = rollout_state(dep)
        want = (dep.get("spec") or {}).get("replicas", 1)
        new = self._new_replica_set(dep, self._replica_sets(dep))
        pods = [p for p in self._pods(dep) if new is not None and _owned_by(p, new)
                and not _meta(p).get("deletionTimestamp")]
        ready = [p for p in pods if pod_ready(p)]
        detail = (f"{state.message}; ReplicaSet {_meta(new).get('name') if new else '(none yet)'} "
                  f"(revision {revision_of(dep)}): {len(ready)}/{want} pods ready")
        problems = [f"{_meta(p).get('name')}: {pod_problem(p)}" for p in pods if not pod_ready(p)]
        if problems:
            detail += " (" + "; ".join(problems[:3]) + ")"
        running = state.done and want > 0 and len(ready) >= want
        # The controller's own verdict (progress deadline) is final, as for `rollout status`;
        # pods that cannot start are up and failing.
        failing = state.message if state.failed else "; ".join(
            f for f in map(pod_failure, pods) if f)
        return BackendStatus(running=running, version=version, detail=detail,
                             failing=failing, final=state.failed)

    def logs(self, since: datetime) -> str:
        dep = self._deployment(required=False)
        if dep is None:
            return ""
        container = self._container(dep)["name"]
        now = datetime.now(timezone.utc)
        since_seconds = max(1, int((now - since).total_seconds()) + 1)
        chunks = []
        for pod in self._pods(dep):
            name = _meta(pod).get("name")
            try:
                text = self._api().pod_log(self.namespace, name, container, since_seconds,
                                           self.opts.log_lines)
            except Exception as exc:
                if getattr(exc, "status", None) == 400:  # still starting: not an error of ours
                    chunks.append(f"==> pod/{name} <==\n(no logs: {_api_message(exc)})\n")
                    continue
                what, hint = explain(exc, self.opts.timeout)
                raise BackendError(f"Kubernetes: cannot read logs of pod {name}: {what}",
                                   hint=hint) from None
            chunks.append(f"==> pod/{name} <==\n{text}")
        return "".join(chunks)

    def plan(self, version: str) -> list[str]:
        ref = self._ref(version)
        steps = []
        try:
            dep = self._deployment(required=False)
        except BackendError as exc:
            dep = None
            steps.append(f"(cannot read {self.where} now: {exc})")
        if dep is not None:
            steps.append(f"{self.where} runs {self._version_of(dep)} (revision {revision_of(dep)})")
        if self.opts.manifest:
            steps.append(f"apply {self.opts.manifest} server-side (field manager {FIELD_MANAGER}) "
                         f"with the image set to {ref}")
        else:
            name = (self._container(dep)["name"] if dep is not None
                    else self.opts.container or self.service)
            steps.append(f"`{self._kubectl('set', 'image', 'deployment/' + self.name, f'{name}={ref}')}`")
        deadline = (f"progress deadline {self.opts.progress_deadline} s" if self.opts.progress_deadline
                    else "the Deployment's progress deadline")
        steps.append(f"wait up to {self.opts.rollout_timeout:g} s for "
                     f"`{self._kubectl('rollout', 'status', 'deployment/' + self.name)}` ({deadline})")
        steps.append("a rollout that fails or times out fails verification and is undone "
                     "(`kubectl rollout undo`)")
        return steps

    def _container_name(self) -> str:
        """The service's container in the Deployment, for by-hand commands (best effort)."""
        try:
            dep = self._deployment(required=False)
            if dep:
                return self._container(dep)["name"]
        except BackendError:
            pass
        return self.opts.container or self.service

    def rollback_steps(self, to_version: str | None) -> list[str]:
        target = "deployment/" + self.name
        if to_version is None:
            return [self._kubectl("delete", target)]
        pinned = self._known_bytes(to_version)
        if pinned:
            # `rollout undo` would bring back the tag, which may name other bytes by now: set
            # the recorded bytes (and the version annotation) as the automatic rollback does.
            name = self._container_name()
            patch = {"spec": {"template": {
                "metadata": {"annotations": {VERSION_ANNOTATION: to_version}},
                "spec": {"containers": [{"name": name, "image": pinned}]}}}}
            return [self._kubectl("patch", target, "-p", json.dumps(patch, separators=(",", ":"))),
                    self._kubectl("rollout", "status", target,
                                  f"--timeout={self.opts.rollout_timeout:g}s")]
        rev = None
        try:
            for r in reversed(self.history()):
                if r.version == to_version:
                    rev = r.revision
                    break
        except BackendError:
            pass
        if rev is not None:
            first = self._kubectl("rollout", "undo", target, f"--to-revision={rev}")
        else:
            first = self._kubectl("set", "image", target,
                                  f"{self._container_name()}={self._ref(to_version)}")
        return [first, self._kubectl("rollout", "status", target,
                                     f"--timeout={self.opts.rollout_timeout:g}s")]

    # -- beyond the Protocol: what an operator asks about a Deployment ----------------------------

    def history(self) -> list[Revision]:
        """`kubectl rollout history`: one entry per ReplicaSet, oldest revision first."""
        dep = self._deployment()
        out = []
        for rs in self._replica_sets(dep):
            template = (rs.get("spec") or {}).get("template") or {}
            try:
                image = self._container(template).get("image")
            except BackendError:
                image = None
            status = rs.get("status") or {}
            out.append(Revision(
                revision=revision_of(rs), version=version_in(template, image), image=image,
                change_cause=(_meta(rs).get("annotations") or {}).get(CHANGE_CAUSE, ""),
                replica_set=_meta(rs).get("name", ""), replicas=status.get("replicas", 0),
                ready=status.get("readyReplicas", 0)))
        return out

    def pods(self) -> list[PodInfo]:
        dep = self._deployment()
        sets = {_meta(rs).get("uid"): _meta(rs).get("name") for rs in self._replica_sets(dep)}
        out = []
        for pod in self._pods(dep):
            owner = next((sets[r.get("uid")] for r in _meta(pod).get("ownerReferences") or []
                          if r.get("uid") in sets), "")
            containers = (pod.get("spec") or {}).get("containers") or []
            image = next((c.get("image") for c in containers
                          if c.get("name") == (self.opts.container or c.get("name"))), None)
            ready = pod_ready(pod)
            out.append(PodInfo(
                name=_meta(pod).get("name", ""), phase=(pod.get("status") or {}).get("phase", ""),
                ready=ready, version=version_in(pod, image), replica_set=owner,
                restarts=sum(cs.get("restartCount", 0)
                             for cs in (pod.get("status") or {}).get("containerStatuses") or []),
                reason="" if ready else pod_problem(pod),
                terminating=bool(_meta(pod).get("deletionTimestamp"))))
        return out

    def events(self, limit: int = 20) -> list[str]:
        """The events `kubectl describe` shows for the Deployment, its ReplicaSets and pods."""
        dep = self._deployment()
        names = {("Deployment", self.name)}
        names |= {("ReplicaSet", _meta(rs).get("name")) for rs in self._replica_sets(dep)}
        names |= {("Pod", _meta(p).get("name")) for p in self._pods(dep)}
        return self._event_lines(names, limit)

    def _event_lines(self, names: set[tuple[str, Any]], limit: int) -> list[str]:
        items = self._call(f"list the events of {self.namespace}", self._api().events, self.namespace)
        mine = [e for e in items
                if ((e.get("involvedObject") or {}).get("kind"),
                    (e.get("involvedObject") or {}).get("name")) in names]

        def when(e: dict) -> str:
            return (e.get("lastTimestamp") or e.get("eventTime")
                    or _meta(e).get("creationTimestamp") or "")

        lines = []
        for e in sorted(mine, key=when)[-limit:]:
            obj = e.get("involvedObject") or {}
            count = f" (x{e['count']})" if (e.get("count") or 1) > 1 else ""
            lines.append(f"{e.get('type', 'Normal')} {e.get('reason', '')} "
                         f"{obj.get('kind')}/{obj.get('name')}: {(e.get('message') or '').strip()}{count}")
        return lines

    def scale(self, replicas: int, on_step: StepCallback, wait: bool = True) -> RolloutState | None:
        """`kubectl scale --replicas=N`, then wait until that many pods are available."""
        if replicas < 0:
            raise BackendError(f"cannot scale {self.where} to {replicas} replicas")
        self._deployment()
        self._call(f"scale {self.where}", self._api().scale_deployment, self.namespace,
                   self.name, replicas)
        on_step(f"{self.where} scaled to {replicas} replicas")
        if not wait:
            return None
        state = self.wait_for_rollout(on_step)
        if not state.done:
            raise BackendError(f"Kubernetes: {self.where} did not reach {replicas} available "
                               f"replicas: {state.message}; {self.diagnose()}")
        return state
