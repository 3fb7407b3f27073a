//! Empty on purpose: `floki-agent` build-depends on this crate so that cargo
//! rebuilds the agent (which embeds the kernel object) when the programs change.
//! The programs themselves are the `floki` binary (src/main.rs).
#![no_std]
