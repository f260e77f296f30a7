"""Deploy backends: `build_backend` turns a service's settings into its adapter."""

from __future__ import annotations

from typing import Mapping

from bot.config import Service
from bot.errors import ConfigError
from bot.ports import DeployBackend


def build_backend(service: str, environment: str, settings: Service,
                  environ: Mapping[str, str] | None = None,
                  credentials: Mapping[str, str] | None = None) -> DeployBackend:
    """`environ`: what backend tools run with (None: the process's, minus SLACK_*);
    `credentials`: where a staged version's direct health check reads http_auth's token
    variable (None: the process's), never handed to a tool."""
    kind = settings.backend.kind
    if kind == "docker" and settings.backend.hosts:
        from backends.deploy import several_hosts

        return several_hosts.build(service, environment, settings, credentials)
    if kind == "docker":
        from backends.deploy.docker import DockerBackend

        return DockerBackend(service, environment, settings, environ=credentials)
    if kind == "compose":
        from backends.deploy.compose import ComposeBackend

        return ComposeBackend(service, environment, settings, environ=environ,
                              credentials=credentials)
    if kind == "kubernetes":
        from backends.deploy.kubernetes import KubernetesBackend

        return KubernetesBackend(service, environment, settings)
    raise ConfigError(f"services.{service}.backend.kind: {kind!r} is not available in this "
                      "version of deploybot", hint="use kind: docker, compose or kubernetes")


def build_image_builder(environ=None):
    """The image builder for services with `build:` (docker build, tag, push)."""
    from backends.deploy.images import DockerImageBuilder

    return DockerImageBuilder(environ=environ)
