//! `floki-agent send CHANNEL [FILE]` (blocking client: plain reads and writes).

use std::{
    fs::File,
    io::{self, Read, Write as _},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use floki_agent::client::{ChannelOptions, blocking::Sender};

use super::print_summary;
use crate::cli::SendArgs;

const CHUNK: usize = 1 << 20;

pub fn send(args: SendArgs) -> anyhow::Result<()> {
    let mut input: Box<dyn Read> = match &args.file {
        Some(path) => {
            Box::new(File::open(path).with_context(|| format!("opening {}", path.display()))?)
        }
        None => Box::new(io::stdin().lock()),
    };
    let mut opts = ChannelOptions::new(&args.agent, &args.channel);
    opts.pair_timeout = args.timeout.map(Duration::from_secs);
    let mut tx = Sender::connect(&opts)?;
    let started = Instant::now();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match input.read(&mut buf) {
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => {
                let reason = format!("reading the sender's input failed: {err}");
                tx.abort(&reason);
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
            .with_context(|| format!("channel '{}'", args.channel))?;
    }
    let summary = tx.finish()?;
    let seconds = started.elapsed().as_secs_f64();
    print_summary(
        "sent",
        &args.channel,
        &summary,
        seconds,
        "the receiver verified it",
    );
    Ok(())
}
