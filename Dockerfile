# syntax=docker/dockerfile:1
# floki-agent's image: built in two stages; the kernel programs are compiled
# by the first and embedded in the agent binary, so the image holds one file.
#   docker build -t REGISTRY/floki-agent:0.1.0 .

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# `cargo xtask build-ebpf` installs what the eBPF crate needs (the pinned
# nightly, LLVM 22 from Debian, bpf-linker) and builds it; the agent's build
# script embeds the object.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo xtask build-ebpf \
    && cargo build --release --locked -p floki-agent --bin floki-agent \
    && cp target/release/floki-agent /usr/local/bin/floki-agent

FROM debian:bookworm-slim
COPY --from=build /usr/local/bin/floki-agent /usr/local/bin/floki-agent
# Status and the probes use the admin socket under /run/floki.
ENTRYPOINT ["floki-agent"]
CMD ["run"]
