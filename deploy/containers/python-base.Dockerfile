# TEST ONLY (deploy/test-containers.sh): a stand-in for python:3.11-slim where no image
# registry is reachable. FROM the Debian bookworm rootfs that the script makes with
# debootstrap and `docker import`s; adds Python 3.11 from Debian, the host's CA bundle and
# the host's pip index settings, so pip inside later builds reaches the same package index
# the host uses, through the same TLS-inspecting proxy if there is one.
ARG DEBIAN_IMAGE=local/vertex-gateway-test/debian:bookworm
FROM ${DEBIAN_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python-is-python3 ca-certificates \
    && rm -rf /var/lib/apt/lists/*
# The host's bundle replaces Debian's (it is a superset on a Debian host), and pip, which
# ships its own CA list, is told to use it.
COPY host-ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY pip.conf /etc/pip.conf
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt
