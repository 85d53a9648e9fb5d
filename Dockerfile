# syntax=docker/dockerfile:1
#
# dsr container image.
#
#   docker build -t dsr:0.1.0 .
#   docker build -t dsr:0.1.0 --build-arg VCS_REF="$(git rev-parse HEAD)" \
#       --build-arg BUILD_DATE="$(date -u +%Y-%m-%dT%H:%M:%SZ)" .
#
# Stage 1 compiles the dependencies against a stub crate, so that layer is reused until
# Cargo.toml / Cargo.lock / build.rs / proto/ change; stage 2 compiles the real sources.
# No system protoc is needed: build.rs compiles proto/ in pure Rust (protox).
# The runtime is distroless "cc" (glibc, libgcc, CA certificates, no shell) running as
# uid/gid 10001 with only the binary and a writable /var/lib/dsr.

ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${RUST_IMAGE} AS builder
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /build
# SQLX_OFFLINE: sqlx's checked query macros (if used) read .sqlx/ and never need a database.
ENV CARGO_TERM_COLOR=never \
    CARGO_INCREMENTAL=0 \
    SQLX_OFFLINE=true

# ---- dependency layer -------------------------------------------------------------------
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto ./proto
# Stub every target the manifest names (the lib, the dsr binary and any [[bin]]/[[test]]/
# [[bench]]/[[example]] with an explicit or conventional path) so cargo can load it, then
# build only the dependencies (and build.rs, which needs the real proto/).
RUN set -eux; \
    mkdir -p src; \
    echo 'fn main() {}' > src/main.rs; \
    : > src/lib.rs; \
    awk ' \
      function flush() { \
        if (kind == "") return; \
        if (path != "") { print path } \
        else if (kind == "lib") { } \
        else if (kind == "bin") { if (name != pkg) print "src/bin/" name ".rs" } \
        else if (kind == "test") { print "tests/" name ".rs" } \
        else if (kind == "bench") { print "benches/" name ".rs" } \
        else if (kind == "example") { print "examples/" name ".rs" } \
      } \
      function val(s) { sub(/^[^=]*=[ \t]*"/, "", s); sub(/".*$/, "", s); return s } \
      /^\[package\]/ { flush(); kind = ""; inpkg = 1; next } \
      /^\[lib\]/ { flush(); kind = "lib"; name = ""; path = ""; inpkg = 0; next } \
      /^\[\[(bin|test|bench|example)\]\]/ { flush(); kind = $0; gsub(/[][ \t]/, "", kind); name = ""; path = ""; inpkg = 0; next } \
      /^\[/ { flush(); kind = ""; inpkg = 0; next } \
      inpkg && /^name[ \t]*=/ { pkg = val($0) } \
      kind != "" && /^name[ \t]*=/ { name = val($0) } \
      kind != "" && /^path[ \t]*=/ { path = val($0) } \
      END { flush() }' Cargo.toml \
    | while read -r stub; do \
        if [ ! -e "$stub" ]; then mkdir -p "$(dirname "$stub")"; echo 'fn main() {}' > "$stub"; fi; \
      done; \
    cargo build --release --locked; \
    rm -rf src tests benches examples; \
    rm -rf target/release/dsr target/release/deps/dsr-* target/release/deps/libdsr-* \
           target/release/.fingerprint/dsr-* target/release/build/dsr-*

# ---- source layer -----------------------------------------------------------------------
COPY . .
RUN set -eux; \
    cargo build --release --locked --bin dsr; \
    install -D -m 0755 target/release/dsr /out/usr/local/bin/dsr; \
    install -d -m 0750 /out/var/lib/dsr

# ---- runtime ----------------------------------------------------------------------------
FROM ${RUNTIME_IMAGE} AS runtime

ARG VERSION=0.1.0
ARG VCS_REF=unknown
ARG BUILD_DATE=unknown
LABEL org.opencontainers.image.title="dsr" \
      org.opencontainers.image.description="Data-subject-rights service: export, erase and rectify a person's data across every store, over gRPC" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.created="${BUILD_DATE}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/example/dsr" \
      org.opencontainers.image.base.name="gcr.io/distroless/cc-debian12:nonroot"

COPY --from=builder --chown=0:0 /out/usr/local/bin/dsr /usr/local/bin/dsr
COPY --from=builder --chown=10001:10001 /out/var/lib/dsr /var/lib/dsr

ENV DSR_DATA_DIR=/var/lib/dsr
WORKDIR /var/lib/dsr
USER 10001:10001

# 50051: gRPC (set DSR_LISTEN=0.0.0.0:50051 plus API tokens to serve beyond loopback)
# 9090: Prometheus metrics
EXPOSE 50051 9090

ENTRYPOINT ["dsr"]
CMD ["serve"]
