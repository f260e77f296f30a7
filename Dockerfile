# deploybot's own image. Build it with scripts/build-image.sh, which first builds the project and
# every dependency as wheels on the host (build/image/wheels) and labels the image with a hash of
# its sources:
#
#   scripts/build-image.sh                 # FROM python:3.11-slim-bookworm (pulled by the engine)
#   scripts/build-image.sh --base debian   # FROM a base made from Debian packages: no registry
#
# Run: docker run --read-only --tmpfs /tmp -v deploybot-data:/var/lib/deploybot \
#        -v "$PWD/deploybot.yaml:/etc/deploybot/deploybot.yaml:ro" --env-file deploybot.env deploybot:dev run
# (deploy/compose.yaml does exactly this.)
ARG BASE_IMAGE=python:3.11-slim-bookworm

# -- build: a venv filled from the host's wheels only (no index, no compiler needed) ---------------
FROM ${BASE_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
# The dependencies first, in a layer of their own that a change of deploybot's code reuses. Out go
# what deploybot never runs (keeps the image near 200 MB): the kubernetes package's asyncio twin
# of its client (68 MB; deploybot uses the sync one) with aiohttp, which only that needs.
COPY build/image/wheels/deps/ /tmp/wheels/
RUN python3 -m venv /opt/deploybot \
 && /opt/deploybot/bin/pip install -q --no-index --find-links /tmp/wheels /tmp/wheels/*.whl \
 && rm -rf /opt/deploybot/lib/python3.11/site-packages/kubernetes/aio \
 && /opt/deploybot/bin/pip uninstall -q -y aiohttp aiohttp-retry aiosignal aiohappyeyeballs \
      frozenlist multidict propcache yarl
# Then deploybot, and pip and setuptools go (nothing is installed at run time). Every deploybot
# module must still import.
COPY build/image/wheels/app/ /tmp/app/
RUN /opt/deploybot/bin/pip install -q --no-index --no-deps /tmp/app/*.whl \
 && /opt/deploybot/bin/pip uninstall -q -y pip setuptools \
 && /opt/deploybot/bin/deploybot --help >/dev/null \
 && /opt/deploybot/bin/python -c "import importlib, pkgutil, bot, handlers, backends; \
[importlib.import_module(m.name) for p in (bot, handlers, backends) \
 for m in pkgutil.walk_packages(p.__path__, p.__name__ + '.')]; \
import kubernetes.client, kubernetes.config, slack_bolt.adapter.socket_mode, slack_sdk.web"
# scripts/build-image.sh keeps only the newest build stage (the layer cache of the next build).
ARG SOURCE_HASH=unknown
LABEL io.deploybot.stage=build io.deploybot.build-of=${SOURCE_HASH}

# -- final: the base, one non-root user and the venv -----------------------------------------------
FROM ${BASE_IMAGE}
# Metrics and health on all of the container's interfaces, so that a kubelet probe or Prometheus
# can reach them; publishing the port (127.0.0.1 or not at all) stays the operator's choice.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/deploybot/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/var/lib/deploybot \
    DEPLOYBOT_DB=/var/lib/deploybot/deploybot.db \
    DEPLOYBOT_CONFIG=/etc/deploybot/deploybot.yaml \
    DEPLOYBOT_METRICS_HOST=0.0.0.0 \
    DEPLOYBOT_METRICS_PORT=9464
# The data folder belongs to the user, so a fresh named volume mounted there does too.
RUN groupadd --system --gid 10001 deploybot \
 && useradd --uid 10001 --gid 10001 --home-dir /var/lib/deploybot --no-create-home \
      --shell /usr/sbin/nologin deploybot \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/deploybot \
 && install -d -m 0755 /etc/deploybot
COPY --from=build /opt/deploybot /opt/deploybot
USER 10001:10001
WORKDIR /var/lib/deploybot
EXPOSE 9464
# Exec form with the venv's Python (slim images have no curl); no proxy for loopback.
# DEPLOYBOT_HEALTHCHECK_URL overrides the URL, e.g. http://127.0.0.1:3000/healthz with `run --http`.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python3", "-c", "import os, urllib.request as u; port = os.environ.get('DEPLOYBOT_METRICS_PORT') or '9464'; url = os.environ.get('DEPLOYBOT_HEALTHCHECK_URL') or 'http://127.0.0.1:%s/healthz' % port; u.build_opener(u.ProxyHandler({})).open(url, timeout=4).close()"]
ENTRYPOINT ["deploybot"]
CMD ["run"]
