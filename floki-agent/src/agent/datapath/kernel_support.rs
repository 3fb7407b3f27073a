//! What the running kernel offers the eBPF datapath. Probed before the
//! programs load (aya's feature probes: tiny programs and maps the kernel
//! accepts or refuses), so that a kernel without one of them falls back with
//! the missing piece named instead of failing at load with a verifier log.

use aya::{
    maps::MapType,
    programs::ProgramType,
    sys::{BpfHelper, is_helper_supported, is_map_supported, is_program_supported},
};

use serde::{Deserialize, Serialize};

/// The running kernel, as the agent probed it at start.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct KernelSupport {
    /// `uname -r`.
    pub release: String,
    /// Each program type, map type and helper the kernel programs use (empty
    /// with `--no-ebpf`: nothing is probed).
    pub features: Vec<FeatureSupport>,
}

/// One feature the kernel programs need.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FeatureSupport {
    /// Short name (`sk_msg`, `sockhash`, `msg_redirect_hash`, ...).
    pub name: String,
    /// What it is, in the kernel's terms.
    pub what: String,
    /// Whether the kernel has it (null when the probe itself failed).
    pub supported: Option<bool>,
    /// Why the answer is not the kernel's own, if it is not.
    pub note: Option<String>,
}

/// How a feature is probed.
#[derive(Clone, Copy, Debug)]
enum Probe {
    Program(ProgramType),
    Map(MapType),
    Helper(ProgramType, BpfHelper),
}

/// One thing the kernel programs need.
#[derive(Clone, Copy, Debug)]
struct Requirement {
    /// Short name, as `status` and `--pretend-kernel-lacks` spell it.
    name: &'static str,
    /// What it is, in the kernel's terms.
    what: &'static str,
    probe: Probe,
}

/// Everything `floki-ebpf` uses: its two program types, its map types and the
/// helpers each program calls.
const REQUIREMENTS: &[Requirement] = &[
    Requirement {
        name: "sock_ops",
        what: "BPF_PROG_TYPE_SOCK_OPS programs",
        probe: Probe::Program(ProgramType::SockOps),
    },
    Requirement {
        name: "sk_msg",
        what: "BPF_PROG_TYPE_SK_MSG programs",
        probe: Probe::Program(ProgramType::SkMsg),
    },
    Requirement {
        name: "sockhash",
        what: "BPF_MAP_TYPE_SOCKHASH maps",
        probe: Probe::Map(MapType::SockHash),
    },
    Requirement {
        name: "sk_storage",
        what: "BPF_MAP_TYPE_SK_STORAGE maps",
        probe: Probe::Map(MapType::SkStorage),
    },
    Requirement {
        name: "hash",
        what: "BPF_MAP_TYPE_HASH maps",
        probe: Probe::Map(MapType::Hash),
    },
    Requirement {
        name: "array",
        what: "BPF_MAP_TYPE_ARRAY maps",
        probe: Probe::Map(MapType::Array),
    },
    Requirement {
        name: "sock_hash_update",
        what: "the bpf_sock_hash_update helper in sock_ops",
        probe: Probe::Helper(ProgramType::SockOps, BpfHelper::BPF_FUNC_sock_hash_update),
    },
    Requirement {
        name: "msg_redirect_hash",
        what: "the bpf_msg_redirect_hash helper in sk_msg",
        probe: Probe::Helper(ProgramType::SkMsg, BpfHelper::BPF_FUNC_msg_redirect_hash),
    },
    Requirement {
        name: "sk_storage_get",
        what: "the bpf_sk_storage_get helper in sk_msg",
        probe: Probe::Helper(ProgramType::SkMsg, BpfHelper::BPF_FUNC_sk_storage_get),
    },
    Requirement {
        name: "sk_storage_get_sock_ops",
        what: "the bpf_sk_storage_get helper in sock_ops",
        probe: Probe::Helper(ProgramType::SockOps, BpfHelper::BPF_FUNC_sk_storage_get),
    },
    Requirement {
        name: "socket_cookie",
        what: "the bpf_get_socket_cookie helper in sock_ops",
        probe: Probe::Helper(ProgramType::SockOps, BpfHelper::BPF_FUNC_get_socket_cookie),
    },
    Requirement {
        name: "netns_cookie",
        what: "the bpf_get_netns_cookie helper in sock_ops (Linux 5.15)",
        probe: Probe::Helper(ProgramType::SockOps, BpfHelper::BPF_FUNC_get_netns_cookie),
    },
];

/// The names `--pretend-kernel-lacks` accepts.
pub fn feature_names() -> impl Iterator<Item = &'static str> {
    REQUIREMENTS.iter().map(|r| r.name)
}

/// Probes every requirement. `pretend_missing` names features to report as
/// absent whatever the kernel says: how tests exercise the fallback on a
/// kernel that has everything.
pub fn probe(pretend_missing: &[String]) -> KernelSupport {
    let features = REQUIREMENTS
        .iter()
        .map(|req| {
            let (supported, note) = if pretend_missing.iter().any(|name| name == req.name) {
                (
                    Some(false),
                    Some("reported missing by --pretend-kernel-lacks".to_owned()),
                )
            } else {
                match run(req.probe) {
                    Ok(found) => (Some(found), None),
                    // Without CAP_BPF the probe itself fails: say so and let
                    // the load report the real error.
                    Err(err) => (None, Some(format!("probe failed: {err}"))),
                }
            };
            FeatureSupport {
                name: req.name.to_owned(),
                what: req.what.to_owned(),
                supported,
                note,
            }
        })
        .collect();
    KernelSupport {
        release: release(),
        features,
    }
}

/// The running kernel's release (`uname -r`), nothing probed.
pub fn release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_else(|err| format!("unknown ({err})"))
}

fn run(probe: Probe) -> Result<bool, String> {
    match probe {
        Probe::Program(kind) => is_program_supported(kind).map_err(|e| e.to_string()),
        Probe::Map(kind) => is_map_supported(kind).map_err(|e| e.to_string()),
        Probe::Helper(kind, helper) => is_helper_supported(kind, helper).map_err(|e| e.to_string()),
    }
}

/// Why the kernel cannot run the datapath: every feature it lacks, or `None`.
pub fn missing_reason(kernel: &KernelSupport) -> Option<String> {
    let missing: Vec<String> = kernel
        .features
        .iter()
        .filter(|f| f.supported == Some(false))
        .map(|f| format!("{} ({})", f.what, f.name))
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "kernel {} lacks {}; same-node channels use shm or plain TCP (docs/KERNELS.md lists the kernels tested)",
            kernel.release,
            missing.join(", ")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pretended_gap_is_named_in_the_reason() {
        let kernel = KernelSupport {
            release: "6.1.0".into(),
            features: vec![FeatureSupport {
                name: "sk_msg".into(),
                what: "BPF_PROG_TYPE_SK_MSG programs".into(),
                supported: Some(false),
                note: None,
            }],
        };
        let reason = missing_reason(&kernel).unwrap();
        assert!(reason.starts_with("kernel 6.1.0 lacks BPF_PROG_TYPE_SK_MSG programs (sk_msg)"));
    }

    #[test]
    fn unknown_features_are_not_reported_missing() {
        let kernel = KernelSupport {
            release: "6.1.0".into(),
            features: vec![FeatureSupport {
                name: "sk_msg".into(),
                what: "x".into(),
                supported: None,
                note: Some("probe failed".into()),
            }],
        };
        assert_eq!(missing_reason(&kernel), None);
    }

    #[test]
    fn names_are_unique() {
        let mut names: Vec<_> = feature_names().collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), REQUIREMENTS.len());
    }
}
