# The frugal trainer image: the Rust trainer linked against libtorch from PyTorch's wheel
# (torch==2.11.0), the same libtorch the project builds and tests with (scripts/env.sh).
# Build from the repository root:
#   docker build -f e2e/kind/trainer.Dockerfile --build-arg TORCH_VARIANT=cu130 -t frugal-trainer:dev .
#
# TORCH_VARIANT picks the wheel, and with it the NVIDIA driver the node needs (the CUDA user-space
# libraries ship inside the wheel; only the driver comes from the host, via the NVIDIA container
# toolkit / GPU operator):
#   cpu    no GPU, no driver (used by the kind e2e run, whose GPU nodes are fake)
#   cu126  CUDA 12.6: driver >= 560.28.03 (>= 525.60.13 through CUDA minor-version compatibility)
#   cu128  CUDA 12.8: driver >= 570.26 (>= 525.60.13 through minor-version compatibility);
#          needed for Blackwell (sm_100/sm_120)
#   cu130  CUDA 13.0: driver >= 580.65.06; the default torch==2.11.0 wheel on PyPI is this build
ARG RUST_VERSION=1.95
ARG TORCH_VERSION=2.11.0
ARG TORCH_VARIANT=cu130

FROM rust:${RUST_VERSION}-bookworm AS build
ARG TORCH_VERSION
ARG TORCH_VARIANT
RUN apt-get update && apt-get install -y --no-install-recommends python3-venv && rm -rf /var/lib/apt/lists/*
# The venv lives at the same path in the runtime image: the trainer's rpath points into it.
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir "torch==${TORCH_VERSION}" \
      $( [ "${TORCH_VARIANT}" = cu130 ] || echo --index-url "https://download.pytorch.org/whl/${TORCH_VARIANT}" )
ENV LIBTORCH_USE_PYTORCH=1 PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p frugal-trainer \
 && install -D target/release/frugal-trainer /out/frugal-trainer

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends python3 libgomp1 ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 65532 --no-create-home trainer
COPY --from=build /opt/venv /opt/venv
COPY --from=build /out/frugal-trainer /usr/local/bin/frugal-trainer
ENV NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/frugal-trainer"]
