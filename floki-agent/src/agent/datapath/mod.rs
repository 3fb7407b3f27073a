//! How channel bytes travel on this node: spliced by the kernel programs
//! (`ebpf` mode), or over plain TCP between the two ends (`fallback` mode,
//! when eBPF cannot load or is disabled). The agent never carries the bytes
//! itself in either mode.

mod ebpf;
pub mod kernel_support;
mod mounts;

use std::{io, net::SocketAddr, path::PathBuf};

pub use ebpf::{AttachedProgram, EbpfDatapath, SpliceHandle, unpin_all};
use floki_common::{ChannelRecord, DatapathCounters};
pub use mounts::cgroup2_root;
use tokio::net::TcpStream;
use tracing::{info, warn};

use floki_proto::control::Hello;
use kernel_support::KernelSupport;

/// Why the kernel datapath could not start.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    /// /proc/mounts unreadable.
    #[error("reading /proc/mounts")]
    Mounts {
        /// Why.
        source: io::Error,
    },
    /// No cgroup v2 hierarchy.
    #[error(
        "no cgroup v2 hierarchy is mounted (fstype cgroup2 in /proc/mounts); pass --cgroup PATH"
    )]
    NoCgroup2,
    /// The cgroup could not be opened.
    #[error("cannot open cgroup {path} (pass an existing cgroup v2 directory with --cgroup)")]
    Cgroup {
        /// Path.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// `--cgroup` names a directory outside the cgroup v2 hierarchy.
    #[error(
        "{} is not a cgroup v2 directory; pass one under the cgroup v2 root ({})",
        path.display(),
        root.as_deref().map_or_else(|| "none mounted".to_owned(), |r| r.display().to_string())
    )]
    NotCgroup2 {
        /// Path.
        path: PathBuf,
        /// Where cgroup v2 is mounted, if it is.
        root: Option<PathBuf>,
    },
    /// The pin directory is not on bpffs.
    #[error(
        "pin directory {pin_dir} is not on a bpffs mount; mount one there or use --pin-dir under /sys/fs/bpf"
    )]
    NotOnBpffs {
        /// Path.
        pin_dir: PathBuf,
    },
    /// bpffs could not be mounted or prepared.
    #[error("preparing bpffs at {path}")]
    Bpffs {
        /// Path.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The object could not be loaded.
    #[error("loading the eBPF object")]
    Load(#[from] aya::EbpfError),
    /// A program could not be loaded or attached.
    #[error("program {name}")]
    Program {
        /// Program name.
        name: &'static str,
        /// Why.
        source: aya::programs::ProgramError,
    },
    /// The `sock_ops` link could not be turned into a pinnable link.
    #[error("the sock_ops link cannot be pinned")]
    Link {
        /// Why.
        source: aya::programs::links::LinkError,
    },
    /// A map is missing or of the wrong type.
    #[error("map {name}")]
    Map {
        /// Map name.
        name: &'static str,
        /// Why.
        source: aya::maps::MapError,
    },
    /// Pinning failed.
    #[error("pinning {what} at {path}")]
    Pin {
        /// What was pinned.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// Why.
        source: aya::pin::PinError,
    },
}

/// One line out of a load error: the verifier's log can run to thousands of
/// lines; its last line says what it refused.
fn summarize(detail: &str) -> String {
    let Some((head, log)) = detail.split_once("Verifier output:") else {
        return detail.to_owned();
    };
    let verdict = log
        .lines()
        .map(str::trim)
        .rfind(|line| {
            !line.is_empty()
                && !line.starts_with("verification time")
                && !line.starts_with("stack depth")
                && !line.starts_with("processed ")
                && !line.starts_with(')')
        })
        .unwrap_or("");
    format!("{} verifier: {verdict}", head.trim_end_matches(['.', ' ']))
}

/// Settings of the datapath.
#[derive(Clone, Debug)]
pub struct DatapathConfig {
    /// cgroup v2 directory for `sock_ops` (its root if `None`).
    pub cgroup: Option<PathBuf>,
    /// bpffs directory for the agent's pins.
    pub pin_dir: PathBuf,
    /// `Some(reason)` to stay in fallback mode (`--no-ebpf`).
    pub disabled: Option<String>,
    /// Kernel features to treat as missing (`--pretend-kernel-lacks`).
    pub pretend_missing: Vec<String>,
}

/// The datapath of this node.
pub enum Datapath {
    /// Kernel programs attached.
    Ebpf(Box<EbpfDatapath>, KernelSupport),
    /// Plain TCP, and why.
    Fallback {
        /// Why eBPF is not in use.
        reason: String,
        /// What the kernel offers.
        kernel: KernelSupport,
    },
}

impl Datapath {
    /// Starts the kernel datapath, or falls back to plain TCP with the
    /// reason logged: a node without eBPF still serves every channel.
    pub fn start(config: &DatapathConfig) -> Self {
        if let Some(reason) = &config.disabled {
            warn!(%reason, "eBPF datapath disabled: channels use plain TCP");
            // Disabled means no BPF at all, probes included.
            return Self::Fallback {
                reason: reason.clone(),
                kernel: KernelSupport {
                    release: kernel_support::release(),
                    features: Vec::new(),
                },
            };
        }
        let kernel = kernel_support::probe(&config.pretend_missing);
        if let Some(reason) = kernel_support::missing_reason(&kernel) {
            warn!(%reason, "falling back to plain TCP");
            return Self::Fallback { reason, kernel };
        }
        match EbpfDatapath::load(config) {
            Ok(datapath) => {
                info!(cgroup = %datapath.cgroup().display(), kernel = %kernel.release, "eBPF datapath attached: same-node channels are spliced in the kernel");
                Self::Ebpf(Box::new(datapath), kernel)
            }
            Err(err) => {
                let detail = floki_client::error_chain(&err);
                let reason = format!(
                    "eBPF unavailable ({}); the agent needs CAP_BPF and CAP_NET_ADMIN (privileged) \
                     and a kernel with sockmap, sk_msg and sock_ops",
                    summarize(&detail)
                );
                warn!(%reason, "falling back to plain TCP");
                tracing::debug!(%detail, "eBPF load failure in full");
                Self::Fallback { reason, kernel }
            }
        }
    }

    /// Why eBPF is not in use (fallback mode).
    pub fn fallback_reason(&self) -> Option<&str> {
        match self {
            Self::Ebpf(..) => None,
            Self::Fallback { reason, .. } => Some(reason),
        }
    }

    /// What the kernel offers the programs, as probed at start.
    pub fn kernel(&self) -> &KernelSupport {
        match self {
            Self::Ebpf(_, kernel) | Self::Fallback { kernel, .. } => kernel,
        }
    }

    /// The attached programs' datapath, in `ebpf` mode.
    pub fn ebpf(&self) -> Option<&EbpfDatapath> {
        match self {
            Self::Ebpf(ebpf, _) => Some(ebpf),
            Self::Fallback { .. } => None,
        }
    }

    /// Whether the kernel programs are attached.
    pub fn is_ebpf(&self) -> bool {
        matches!(self, Self::Ebpf(..))
    }

    /// Prepares the splice of channel `id`: the sender's socket connecting to
    /// `addr` from one namespace, the socket a listener accepts from it in
    /// the other; the kernel holds the sender to `granted` bytes until the
    /// receiver's first credit (0: no limit until then). `Err` explains why
    /// it will use plain TCP instead.
    pub fn install(
        &self,
        id: u32,
        name: &str,
        (sender_netns, receiver_netns): (Option<u64>, Option<u64>),
        addr: SocketAddr,
        granted: u64,
    ) -> Result<SpliceHandle, String> {
        match self {
            Self::Ebpf(ebpf, _) => {
                ebpf.install(id, name, (sender_netns, receiver_netns), addr, granted)
            }
            Self::Fallback { .. } => Err("fallback datapath".into()),
        }
    }

    /// Prepares the redirect of a producer's writes into `link`, the
    /// connection to its consumer's agent; `Err` explains why the agent
    /// relays them instead.
    pub fn install_outbound(
        &self,
        id: u32,
        producer: &Hello,
        listener: SocketAddr,
        link: &TcpStream,
    ) -> Result<SpliceHandle, String> {
        match self {
            Self::Ebpf(ebpf, _) => ebpf.install_outbound(id, producer, listener, link),
            Self::Fallback { .. } => Err("fallback datapath".into()),
        }
    }

    /// The kernel's record of a spliced channel.
    pub fn record(&self, handle: &SpliceHandle) -> Option<ChannelRecord> {
        match self {
            Self::Ebpf(ebpf, _) => ebpf.record(handle),
            Self::Fallback { .. } => None,
        }
    }

    /// Forgets a spliced channel.
    pub fn remove(&self, handle: &SpliceHandle) {
        if let Self::Ebpf(ebpf, _) = self {
            ebpf.remove(handle);
        }
    }

    /// Spliced channels in flight that the agent found in the pinned maps of
    /// a previous agent (empty after a fresh load).
    pub fn adopted(&self) -> Vec<(u32, ChannelRecord)> {
        match self {
            Self::Ebpf(ebpf, _) => ebpf.adopted().to_vec(),
            Self::Fallback { .. } => Vec::new(),
        }
    }

    /// The kernel programs' totals.
    pub fn counters(&self) -> DatapathCounters {
        match self {
            Self::Ebpf(ebpf, _) => ebpf.counters(),
            Self::Fallback { .. } => DatapathCounters::default(),
        }
    }

    /// Detaches and unpins everything (graceful stop).
    pub fn shutdown(&self) {
        if let Self::Ebpf(ebpf, _) = self {
            ebpf.shutdown();
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn summarizes_verifier_logs() {
        let detail = "program x: the BPF_PROG_LOAD syscall returned Permission denied. Verifier output: 0: r1 = 1\n77: (61) r7 = *(u32 *)(r4 +0)\ndereference of modified ctx ptr R4 off=40 disallowed\nverification time 441 usec\nstack depth 0+88\n";
        assert_eq!(
            super::summarize(detail),
            "program x: the BPF_PROG_LOAD syscall returned Permission denied verifier: dereference of modified ctx ptr R4 off=40 disallowed"
        );
    }
}
