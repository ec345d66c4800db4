# The frugal trainer: the Rust trainer and libtorch from PyTorch's torch==2.11.0 wheel, in two
# variants of the same wheel (VARIANT):
#   cuda  the wheel's whole library set (libtorch_cuda and the nvidia-* CUDA 13 libraries); the
#         node provides only the driver (>= 580.65.06), through the NVIDIA container toolkit or GPU
#         operator. The default for GPU nodes.
#   cpu   only the libraries the binary itself loads (libtorch_cpu, libc10, libgomp and the two
#         small CUDA runtime libraries libtorch_cpu links); the binary opens libtorch_cuda.so at
#         start only where it exists, so it runs on the CPU here.
#
#   images/build trainer-cpu trainer-cuda     the binary built on this machine, staged with its
#                                             libraries by images/stage-trainer (BINARIES=prebuilt)
#   docker build -f images/trainer.Dockerfile --build-arg BINARIES=source --build-arg VARIANT=cpu \
#     -t frugal-trainer:0.1.0-cpu .           built from source in a Rust stage (needs registries)
ARG BINARIES=prebuilt
ARG RUST_VERSION=1.95
ARG VARIANT=cuda

FROM rust:${RUST_VERSION}-bookworm AS source
ARG VARIANT
RUN apt-get update && apt-get install -y --no-install-recommends python3-venv \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /venv && /venv/bin/pip install --no-cache-dir torch==2.11.0
ENV LIBTORCH_USE_PYTORCH=1 PATH=/venv/bin:$PATH
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p frugal-trainer \
 && images/stage-trainer "$VARIANT" target/release/frugal-trainer \
      "$(python -c 'import site; print(site.getsitepackages()[0])')" /out

# The context is a directory that images/stage-trainer filled: bin/ and python/ (the wheel's
# layout, so libtorch's own $ORIGIN rpaths find the nvidia-* libraries).
FROM scratch AS prebuilt
COPY . /out/

FROM ${BINARIES} AS binaries

FROM debian:bookworm-slim AS runtime
LABEL org.opencontainers.image.title="frugal-trainer" org.opencontainers.image.vendor="frugal" \
      org.opencontainers.image.licenses="Apache-2.0"
# The CA certificates object storage's HTTPS is verified against (rustls takes the system's).
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 65532 frugal \
 && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin frugal
COPY --from=binaries /out/ /opt/frugal/
ENV PATH=/opt/frugal/bin:$PATH LD_LIBRARY_PATH=/opt/frugal/python/torch/lib
USER 65532:65532
ENTRYPOINT ["frugal-trainer"]
CMD ["info"]

FROM runtime AS cpu

FROM runtime AS cuda
# No NVIDIA_VISIBLE_DEVICES here: with `all` a container runtime that honours it would show every
# GPU of the node to any pod of this image, CPU jobs included; the device plugin sets it to the
# GPUs it allocated, and the operator sets `void` on CPU jobs.
ENV NVIDIA_DRIVER_CAPABILITIES=compute,utility

FROM ${VARIANT}
