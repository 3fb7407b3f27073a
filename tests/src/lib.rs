//! Harness for Floki's kernel tests, demo and benchmarks: a cgroup of the
//! test's own, a real agent process attached to it, client processes moved
//! into it, network namespaces. Nothing here ever attaches to the machine's
//! root cgroup.

pub mod agent;
pub mod cgroup;
pub mod cluster;
pub mod links;
pub mod metrics;
pub mod netns;
pub mod node;
pub mod proc_stats;
pub mod raw;
pub mod servers;

use std::path::PathBuf;

/// The `floki-agent` binary under test: `FLOKI_AGENT_BIN`, or the one in the
/// running executable's target directory.
pub fn agent_binary() -> PathBuf {
    binary("floki-agent", "FLOKI_AGENT_BIN")
}

/// The `floki-probe` test client.
pub fn probe_binary() -> PathBuf {
    binary("floki-probe", "FLOKI_PROBE_BIN")
}

/// The `floki-intruder` hostile client of the security tests.
pub fn intruder_binary() -> PathBuf {
    binary("floki-intruder", "FLOKI_INTRUDER_BIN")
}

fn binary(name: &str, env: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(env) {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("current executable");
    // target/<profile>/deps/<test> or target/<profile>/<bin>
    for dir in exe.ancestors().skip(1).take(3) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "{name} not found near {}; build it (`cargo build --workspace`, as `cargo xtask test` does) or set {env}",
        exe.display()
    );
}

/// A large test size divided by `FLOKI_TEST_SCALE` (default 1): the kernel
/// matrix (`cargo xtask test`, guests under emulation) runs the same
/// assertions on smaller streams.
pub fn scaled(bytes: u64) -> u64 {
    let divisor = std::env::var("FLOKI_TEST_SCALE")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|&d| d > 0)
        .unwrap_or(1);
    bytes / divisor
}

/// Fails (never skips) when the test cannot run as it must: under CI a
/// missing privilege is a red build, not a silent pass.
pub fn require_root() {
    if !nix::unistd::Uid::effective().is_root() {
        panic!(
            "this test loads eBPF programs and needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN); run it with `cargo xtask test` as root"
        );
    }
}

/// Deterministic pseudo-random bytes (the first `len` bytes of [`Pattern`]).
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut data = vec![0u8; len];
    Pattern::new(seed).fill(0, &mut data);
    data
}

/// The seed of a stream's data: broadcast and gather streams carry their
/// producer's data, shuffle streams a partition of their own.
pub fn stream_seed(
    base: u64,
    pattern: floki_client::Pattern,
    producer: &str,
    consumer: &str,
) -> u64 {
    use floki_client::Pattern;
    let name = |s: &str| {
        s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        })
    };
    match pattern {
        Pattern::Shuffle => base ^ name(producer) ^ name(consumer).rotate_left(17),
        _ => base ^ name(producer),
    }
}

/// An endless pseudo-random byte stream that any reader can regenerate at any
/// offset, whatever the chunking: senders write it, receivers check it.
#[derive(Clone, Copy, Debug)]
pub struct Pattern {
    seed: u64,
}

impl Pattern {
    /// The stream for `seed`.
    pub fn new(seed: u64) -> Self {
        Self { seed }
    }

    /// Writes the stream's bytes `offset..offset + buf.len()` into `buf`.
    pub fn fill(&self, offset: u64, buf: &mut [u8]) {
        let mut pos = 0;
        while pos < buf.len() {
            let at = offset + pos as u64;
            let word = splitmix64(self.seed ^ (at / 8)).to_le_bytes();
            let skip = (at % 8) as usize;
            let n = (8 - skip).min(buf.len() - pos);
            buf[pos..pos + n].copy_from_slice(&word[skip..skip + n]);
            pos += n;
        }
    }
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::Pattern;

    #[test]
    fn pattern_is_independent_of_chunking() {
        let p = Pattern::new(42);
        let mut whole = vec![0u8; 100];
        p.fill(0, &mut whole);
        let mut pieces = vec![0u8; 100];
        let (a, b) = pieces.split_at_mut(13);
        p.fill(0, a);
        p.fill(13, b);
        assert_eq!(whole, pieces);
    }
}
