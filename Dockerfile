# syntax=docker/dockerfile:1
# The zt-agent image, for hosted CI and for users with a Docker engine or BuildKit:
#   docker build -t ghcr.io/zt-dev/zt-agent:0.1.0 .
# It produces the same filesystem as `cargo xtask image` (which needs no engine): the build stage
# runs `cargo xtask image --rootfs /rootfs`, which writes the release agent and the libraries `ldd`
# names, and the final stage is that directory alone.

FROM rust:1.95-bookworm AS build
# The eBPF object is built with the nightly's rust-src and bpf-linker 0.10.3 (it links with
# rustc's own LLVM); `cargo xtask build-ebpf` checks for both.
RUN rustup toolchain install nightly --profile minimal --component rust-src \
    && cargo install bpf-linker@0.10.3 --locked
WORKDIR /src
COPY . .
RUN cargo xtask image --rootfs /rootfs

FROM scratch
COPY --from=build /rootfs /
LABEL org.opencontainers.image.title="zt-agent" \
      org.opencontainers.image.source="https://github.com/zt-dev/zt" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/usr/local/bin
ENTRYPOINT ["/usr/local/bin/zt-agent"]
