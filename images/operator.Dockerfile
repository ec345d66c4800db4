# The frugal operator: one static-ish Rust binary (no libtorch, no GPU driver) on Debian slim.
#
#   images/build operator                 the binary built on this machine is copied in (BINARIES=prebuilt)
#   docker build -f images/operator.Dockerfile --build-arg BINARIES=source -t frugal-operator:0.1.0 .
#                                         built from source in a Rust stage (needs a registry)
ARG BINARIES=prebuilt
ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS source
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p frugal-operator \
 && install -D target/release/frugal-operator /out/bin/frugal-operator

# The context is a directory that images/build fills with bin/frugal-operator.
FROM scratch AS prebuilt
COPY bin/frugal-operator /out/bin/frugal-operator

FROM ${BINARIES} AS binaries

FROM debian:bookworm-slim
LABEL org.opencontainers.image.title="frugal-operator" org.opencontainers.image.vendor="frugal" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --gid 65532 frugal \
 && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin frugal
COPY --from=binaries /out/bin/frugal-operator /usr/local/bin/frugal-operator
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/frugal-operator"]
CMD ["run"]
