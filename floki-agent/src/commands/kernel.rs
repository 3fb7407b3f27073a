//! `floki-agent kernel`: what the running kernel offers the eBPF datapath,
//! probed as the agent probes it at start.

use anyhow::{Context as _, bail};
use floki_agent::agent::datapath::kernel_support;

use crate::cli::KernelArgs;

pub fn kernel(args: &KernelArgs) -> anyhow::Result<()> {
    let kernel = kernel_support::probe(&args.pretend_kernel_lacks);
    if args.json {
        let text = serde_json::to_string_pretty(&kernel).context("encoding the kernel report")?;
        println!("{text}");
    } else {
        println!("kernel {}", kernel.release);
        for feature in &kernel.features {
            let answer = match feature.supported {
                Some(true) => "yes",
                Some(false) => "no",
                None => "unknown",
            };
            let line = format!(
                "  {:<24} {:<8} {} {}",
                feature.name,
                answer,
                feature.what,
                feature.note.as_deref().unwrap_or("")
            );
            println!("{}", line.trim_end());
        }
    }
    if let Some(reason) = kernel_support::missing_reason(&kernel) {
        bail!("{reason}");
    }
    if kernel.features.iter().any(|f| f.supported.is_none()) {
        bail!("some features could not be probed: run as root (CAP_BPF)");
    }
    Ok(())
}
