# syntax=docker/dockerfile:1
#
# One image for every role: head, raylet, operator, and the init container that copies
# the binary into a user's worker pod.
#
#   docker build -t ghcr.io/shoal-dev/shoal:0.1.0 .
#
# Stage 1 builds a static (musl) `shoal`; the final image is distroless, non-root
# (uid 65532), and holds only `/usr/local/bin/shoal` plus a single static `cp` (busybox
# invoked as `cp`), which the operator's `install-shoal` init container uses to copy the
# binary into a worker pod's emptyDir.

ARG RUST_VERSION=1.95
FROM rust:${RUST_VERSION}-alpine AS build
RUN apk add --no-cache musl-dev
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin shoal \
    && cp target/release/shoal /shoal

FROM busybox:1.37-musl AS tools

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /shoal /usr/local/bin/shoal
COPY --from=tools /bin/busybox /bin/cp
USER 65532:65532
# GCS, raylet, head REST/metrics, raylet metrics, operator metrics.
EXPOSE 6379 6380 8265 8080 8081
ENTRYPOINT ["/usr/local/bin/shoal"]
