//! `floki-agent status`.

use anyhow::Context as _;
use floki_agent::status::{Status, StoreStatus, fetch};

use super::human;
use crate::cli::StatusArgs;

pub async fn status(args: StatusArgs) -> anyhow::Result<()> {
    if !args.watch {
        return show(&fetch(&args.admin).await?, args.json, false);
    }
    if !(args.interval.is_finite() && args.interval >= 0.05) {
        anyhow::bail!("--interval must be at least 0.05 seconds");
    }
    let interval = std::time::Duration::from_secs_f64(args.interval);
    loop {
        // A stopped agent ends the watch with the reason, like a single call.
        show(&fetch(&args.admin).await?, args.json, true)?;
        tokio::time::sleep(interval).await;
    }
}

/// Prints `status`: pretty JSON once, one JSON line per refresh, or the
/// text, redrawn in place when `watching`.
fn show(status: &Status, json: bool, watching: bool) -> anyhow::Result<()> {
    use std::io::Write as _;
    let encoded = |status| {
        if watching {
            serde_json::to_string(status)
        } else {
            serde_json::to_string_pretty(status)
        }
    };
    match (json, watching) {
        (true, _) => println!(
            "{}",
            encoded(status).context("encoding the status as JSON")?
        ),
        // Home the cursor and clear the screen, then redraw.
        (false, true) => print!("\x1b[H\x1b[2J{}", render(status)),
        (false, false) => print!("{}", render(status)),
    }
    let _ = std::io::stdout().flush();
    Ok(())
}

/// The store's tiers, then each stream it holds.
fn render_store(out: &mut String, store: &StoreStatus) {
    use std::fmt::Write as _;
    let _ = writeln!(
        out,
        "store: memory {} of {} · disk {} of {} in {} · s3 {} · replays {} · refused (full) {}",
        human(store.memory_bytes),
        human(store.memory_budget),
        human(store.disk_bytes),
        human(store.disk_budget),
        store.dir,
        store.s3.as_deref().unwrap_or("none"),
        store.replays,
        store.refused_full
    );
    for stream in &store.streams {
        let expires = stream
            .expires_in_secs
            .map_or_else(|| "until deleted".to_owned(), |s| format!("{s} s left"));
        let run = stream
            .run
            .as_deref()
            .map_or_else(String::new, |run| format!(" · run {run}"));
        let _ = writeln!(
            out,
            "  {:<40} {:<6} {:>12}  {} · read {} times · {}{run}",
            stream.name,
            stream.tier,
            human(stream.bytes),
            stream.state,
            stream.replays,
            expires
        );
    }
    for name in &store.lost {
        let _ = writeln!(
            out,
            "  {name:<40} lost (held in memory; the agent restarted)"
        );
    }
}

fn render(status: &Status) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "node {} · floki-agent {} · up {} s",
        status.node, status.version, status.uptime_secs
    );
    if let Some(metrics) = &status.metrics {
        let _ = writeln!(out, "metrics: {metrics}");
    }
    let datapath = &status.datapath;
    match &datapath.reason {
        None => {
            let _ = writeln!(
                out,
                "datapath: ebpf (cgroup {}, pins {}: {})",
                datapath.cgroup.as_deref().unwrap_or("?"),
                datapath.pin_dir.as_deref().unwrap_or("?"),
                datapath.pins.join(", ")
            );
        }
        Some(reason) => {
            let _ = writeln!(out, "datapath: fallback: {reason}");
        }
    }
    let kernel = &datapath.kernel;
    let lacking: Vec<&str> = kernel
        .features
        .iter()
        .filter(|f| f.supported != Some(true))
        .map(|f| f.name.as_str())
        .collect();
    let _ = match (kernel.features.is_empty(), lacking.is_empty()) {
        (true, _) => writeln!(out, "kernel: {} (not probed)", kernel.release),
        (false, true) => writeln!(
            out,
            "kernel: {} (all {} features the programs use)",
            kernel.release,
            kernel.features.len()
        ),
        (false, false) => writeln!(
            out,
            "kernel: {} (lacks or could not probe: {})",
            kernel.release,
            lacking.join(", ")
        ),
    };
    if !status.programs.is_empty() {
        let _ = writeln!(out, "programs:");
        for program in &status.programs {
            let _ = writeln!(
                out,
                "  {:<16} {:<9} id {:<6} {}",
                program.name, program.kind, program.id, program.attached_to
            );
        }
    }
    if status.channels.is_empty() {
        let _ = writeln!(out, "channels: none yet");
    } else {
        let _ = writeln!(
            out,
            "{:>6}  {:<24} {:<8} {:<9} {:>12} {:>12}  NOTE",
            "ID", "CHANNEL", "STATE", "TRANSPORT", "BYTES", "STREAM"
        );
        for channel in &status.channels {
            let transport = channel
                .transport
                .map_or_else(|| "-".to_owned(), |t| t.to_string());
            let store = channel.store.as_deref().map(|store| match store {
                "stored" => "stored: the receiver is the agent's store".to_owned(),
                _ => "replayed from the agent's store".to_owned(),
            });
            let note = match (&channel.error, &channel.note, store, &channel.reason) {
                (Some(error), _, _, _) => error.clone(),
                (None, Some(note), _, _) => note.clone(),
                (None, None, Some(store), _) => store,
                (None, None, None, Some(reason)) => reason.clone(),
                (None, None, None, None) if channel.ends.len() == 1 => {
                    format!("{} waiting", channel.ends[0])
                }
                (None, None, None, None) => String::new(),
            };
            let _ = writeln!(
                out,
                "{:>6}  {:<24} {:<8} {:<9} {:>12} {:>12}  {}",
                channel.id,
                channel.name,
                format!("{:?}", channel.state).to_lowercase(),
                transport,
                human(channel.bytes),
                human(channel.stream_bytes),
                note
            );
        }
    }
    if !status.peers.is_empty() {
        let _ = writeln!(out, "peers:");
        for peer in &status.peers {
            let _ = writeln!(
                out,
                "  {:<16} {:<22} {} for {:.0} s{}",
                peer.node,
                peer.addr,
                peer.state,
                peer.since_secs,
                peer.error
                    .as_ref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            );
        }
    }
    for workflow in &status.workflows {
        let _ = writeln!(
            out,
            "workflow {} on {}:",
            workflow.name,
            workflow.nodes.join(", ")
        );
        for edge in &workflow.edges {
            let _ = writeln!(
                out,
                "  edge {:<20} {:<10} buffer {:>10}  {}",
                edge.name,
                edge.pattern,
                human(edge.buffer),
                edge.state
            );
            for stream in &edge.streams {
                let transport = stream
                    .transport
                    .map_or_else(|| "-".to_owned(), |t| t.to_string());
                let _ = writeln!(
                    out,
                    "    {:>16} > {:<16} {:<10} {:<7} {}{}",
                    stream.producer,
                    stream.consumer,
                    stream.placement,
                    transport,
                    stream.state,
                    stream
                        .stored
                        .as_ref()
                        .map(|stored| format!(" · {stored}"))
                        .unwrap_or_default()
                );
            }
        }
    }
    render_store(&mut out, &status.store);
    let totals = &status.totals;
    let _ = writeln!(
        out,
        "totals: spliced {} · shm {} · forwarded by the kernel {} · tcp {} · active {} · done {} · failed {}",
        human(totals.spliced_bytes),
        human(totals.shm_bytes),
        human(totals.forwarded_bytes),
        human(totals.fallback_bytes),
        totals.active_channels,
        totals.done_channels,
        totals.failed_channels
    );
    out
}
