# The frugal operator image. Build from the repository root:
#   docker build -f e2e/kind/operator.Dockerfile -t frugal-operator:dev .
# The operator has no tch dependency, so the image needs neither libtorch nor a GPU driver.
ARG RUST_VERSION=1.95
FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p frugal-operator \
 && install -D target/release/frugal-operator /out/frugal-operator

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/frugal-operator /usr/local/bin/frugal-operator
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/frugal-operator"]
