# syntax=docker/dockerfile:1
# The microgate image: one static binary on a distroless base, running as a numeric non-root user.
#
#   docker build -t <registry>/microgate:0.1.0 .
#
# A release ships the archive `make image` builds instead (image/build.sh: no daemon, nothing
# pulled, reproducible). Keep the two alike: the binary at /usr/local/bin/microgate, USER
# 65532:65532 (nonroot), the CA certificates at /etc/ssl/certs/ca-certificates.crt, the
# entrypoint `microgate run`, ports 8080 and 9090.
#
# No OpenSSL anywhere: kube's TLS is rustls with ring (kube's default features), and the binary is
# linked statically against musl (Alpine's Rust targets musl; musl-dev is for the C parts of ring
# and of mimalloc, the allocator).

FROM rust:1.95-alpine AS build
RUN apk add --no-cache musl-dev
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin microgate \
    && cp target/release/microgate /microgate

# distroless/static: CA certificates, /etc/passwd with nonroot (65532), no shell, no libc needed.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /microgate /usr/local/bin/microgate
USER 65532:65532
# Gateway listeners (the ports of the Gateway resources, 8080 in the chart) and the admin port.
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/microgate"]
CMD ["run"]
