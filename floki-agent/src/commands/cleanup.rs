//! `floki-agent cleanup`: removes what an agent pinned, after it stopped.

use anyhow::{Context as _, bail};
use floki_agent::{agent::datapath::unpin_all, status::fetch};

use crate::cli::CleanupArgs;

pub async fn cleanup(args: CleanupArgs) -> anyhow::Result<()> {
    if let Ok(status) = fetch(&args.admin).await {
        bail!(
            "an agent (node {}, up {} s) answers on {}: stop it first (SIGTERM lets its streams \
             finish, then detaches and unpins everything itself)",
            status.node,
            status.uptime_secs,
            args.admin.display()
        );
    }
    if !args.pin_dir.exists() {
        println!(
            "nothing pinned at {}: no Floki programs left attached by an agent there",
            args.pin_dir.display()
        );
        return Ok(());
    }
    let removed = unpin_all(&args.pin_dir).with_context(|| {
        format!(
            "unpinning {} (run as root; is it on bpffs?)",
            args.pin_dir.display()
        )
    })?;
    for name in &removed {
        println!("unpinned {}", args.pin_dir.join(name).display());
    }
    println!(
        "removed {}: its programs are detached; spliced streams still open finish first",
        args.pin_dir.display()
    );
    Ok(())
}
