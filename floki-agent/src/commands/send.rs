//! `floki-agent send CHANNEL [FILE]`.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use floki_agent::client::{ChannelOptions, Sender};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};

use super::{human, rate};
use crate::cli::SendArgs;

const CHUNK: usize = 1 << 20;

pub async fn send(args: SendArgs) -> anyhow::Result<()> {
    let mut input: Box<dyn AsyncRead + Unpin> = match &args.file {
        Some(path) => Box::new(
            tokio::fs::File::open(path)
                .await
                .with_context(|| format!("opening {}", path.display()))?,
        ),
        None => Box::new(tokio::io::stdin()),
    };
    let mut opts = ChannelOptions::new(&args.agent, &args.channel);
    opts.pair_timeout = args.timeout.map(Duration::from_secs);
    let mut tx = Sender::connect(&opts).await?;
    let started = Instant::now();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match input.read(&mut buf).await {
            Ok(n) => n,
            Err(err) => {
                let reason = format!("reading the sender's input failed: {err}");
                tx.abort(&reason).await;
                bail!(
                    "channel '{}': {reason}; the receiver was told",
                    args.channel
                );
            }
        };
        if n == 0 {
            break;
        }
        tx.write_all(&buf[..n])
            .await
            .with_context(|| format!("channel '{}'", args.channel))?;
    }
    let summary = tx.finish().await?;
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "floki: sent {} on channel '{}' via {} in {seconds:.2} s ({}); the receiver verified it (xxh3 {:016x})",
        human(summary.bytes),
        args.channel,
        summary.transport,
        rate(summary.bytes, seconds),
        summary.checksum,
    );
    Ok(())
}
