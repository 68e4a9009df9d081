# csi-wasm node driver image.
#
#   docker build --build-arg VERSION=0.1.0 -t ghcr.io/csi-wasm/csi-wasm:0.1.0 .
#
# Stage 1 builds the wheel from this repository (the generated gRPC stubs are checked in,
# so no protoc is needed); stage 2 installs only that wheel and its dependencies.

FROM python:3.11-slim-bookworm AS builder
WORKDIR /src
COPY . .
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim-bookworm
# Set by the release build: --build-arg VERSION=0.1.0
ARG VERSION=dev
LABEL org.opencontainers.image.title="csi-wasm" \
      org.opencontainers.image.description="Kubernetes CSI node driver that mounts WebAssembly modules read-only into pods" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The wheel's dependencies are resolved from its metadata (grpcio, protobuf, requests...).
COPY --from=builder /wheels /tmp/wheels
RUN pip install --no-cache-dir /tmp/wheels/*.whl && rm -rf /tmp/wheels

# No USER line on purpose: the driver runs as root. It makes bind mounts into kubelet's
# pod directories (CAP_SYS_ADMIN, in a privileged container with Bidirectional mount
# propagation) and writes to root-owned host paths (the kubelet dir, the plugin socket
# dir, the cache under /var/lib/csi-wasm).
ENTRYPOINT ["csi-wasm"]
CMD ["serve"]
