# The vertex-gateway control plane: xDS over gRPC (18000) and the admin/metrics HTTP port (18001).
#
#   docker build -t vertex-gateway:local .
#   docker run --rm -v "$PWD/regions.yaml:/etc/vertex-gateway/regions.yaml:ro" vertex-gateway:local validate /etc/vertex-gateway/regions.yaml
#
# The same image runs the local Vertex emulator (`--entrypoint python ... -m control_plane.lab.emulator`,
# see docker-compose.yml). Envoys run the official envoyproxy/envoy image, not this one.
# Deploying and operating it: docs/RUNBOOK.md.

ARG PYTHON_IMAGE=python:3.11-slim

# ---- build: a virtualenv with the package and its runtime dependencies ----
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src

# Dependencies first, so their layer is reused while only the code changes. They come from
# pyproject.toml's runtime list, which leaves out the Envoy binary (the `envoy` extra, ~100 MB,
# for the demo and the tests): the control plane never runs Envoy.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt

COPY control_plane ./control_plane
# No extras (test, envoy, vertex). --no-deps: every runtime dependency is already in.
RUN pip install --no-deps . \
    && python -m control_plane --help > /dev/null \
    && python -c "import control_plane.app, control_plane.lab.emulator, control_plane.lab.fake_oauth"

# ---- runtime: the virtualenv on a clean base, a non-root user ----
FROM ${PYTHON_IMAGE}
# /etc/vertex-gateway: regions.yaml is mounted here (as a directory, so edits are seen).
# /var/lib/vertex-gateway/demo: owned by the user, so a named volume mounted there (compose
# `emulators` profile: the demo service-account key) starts out writable by it.
RUN groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid gateway --home-dir /home/gateway --create-home \
               --shell /usr/sbin/nologin gateway \
    && mkdir -p /etc/vertex-gateway /var/lib/vertex-gateway/demo \
    && chown -R gateway:gateway /var/lib/vertex-gateway
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /home/gateway
# Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001

# 18000: xDS (gRPC ADS) for the Envoys. 18001: /healthz, /debug/*, /metrics.
EXPOSE 18000 18001

# /healthz answers 503 "degraded" while no valid access token can be had; urlopen raises on
# that and on a refused connection, so either makes the check fail. (No curl in -slim.)
# A container that moves the admin port or address sets VERTEX_GATEWAY_HEALTHZ_URL to match.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ.get('VERTEX_GATEWAY_HEALTHZ_URL') or 'http://127.0.0.1:18001/healthz', timeout=4)"]

# Exec form: python is PID 1 and gets SIGTERM (graceful stop) and SIGHUP (re-read the config
# and the credential files, refresh tokens) directly.
ENTRYPOINT ["python", "-m", "control_plane"]
# Off loopback the control plane refuses plaintext xDS unless --insecure-xds or
# --xds-tls-cert/--xds-tls-key are added, and admin endpoints without a bearer token
# (VERTEX_GATEWAY_ADMIN_TOKEN or --admin-token-file; /healthz stays open). docker-compose.yml
# adds --insecure-xds (private bridge network, 18000 not published) and the token variable;
# deploy/kubernetes/ adds mTLS and a token file from a Secret.
CMD ["serve", "--config", "/etc/vertex-gateway/regions.yaml", "--xds-host", "0.0.0.0", "--admin-host", "0.0.0.0"]
