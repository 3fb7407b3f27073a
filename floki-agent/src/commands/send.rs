//! `floki-agent send`: a plain channel, or this function's streams on a
//! workflow edge (blocking client: plain reads and writes).

use std::{
    fs::File,
    io::{self, Read},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use floki_client::{ChannelOptions, Pattern, blocking::Sender, workflow};

use super::{
    channel::{edge_options, finish_all, send_to_all, stream_to_all},
    print_summary,
};
use crate::cli::SendArgs;

pub fn send(args: SendArgs) -> anyhow::Result<()> {
    let mut edge = edge_options(&args.edge, &args.end, args.timeout)?;
    if let Some(edge) = &mut edge {
        edge.live = args.live;
    }
    let (channel, file) = match (&edge, args.positionals.as_slice()) {
        (Some(_), [file]) => (None, Some(file.clone())),
        (Some(_), []) => (None, None),
        (Some(_), _) => bail!("with --workflow, give at most a FILE (the channel is the edge)"),
        (None, [channel]) => (Some(channel.clone()), None),
        (None, [channel, file]) => (Some(channel.clone()), Some(file.clone())),
        (None, _) => {
            bail!("give a CHANNEL (and optionally a FILE), or --workflow, --edge and --as")
        }
    };
    let input = || -> anyhow::Result<Box<dyn Read>> {
        Ok(match &file {
            Some(path) => Box::new(File::open(path).with_context(|| format!("opening {path}"))?),
            None => Box::new(io::stdin().lock()),
        })
    };
    let started = Instant::now();
    let summaries = match (edge, channel) {
        (Some(opts), _) => {
            let (info, senders) = workflow::blocking::senders(&opts)?;
            if info.pattern == Pattern::Shuffle {
                let dir = args.partition_dir.as_ref().context(
                    "a shuffle producer sends one partition per consumer: give --partition-dir DIR",
                )?;
                // Each partition written and ended in turn, then every
                // verdict: the consumers verify theirs at once.
                let mut ended = Vec::new();
                for (consumer, sender) in senders {
                    let path = dir.join(&consumer);
                    let part = File::open(&path).with_context(|| {
                        format!(
                            "opening the partition for consumer {consumer}: {}",
                            path.display()
                        )
                    })?;
                    ended.extend(stream_to_all(part, vec![(consumer, sender)])?);
                }
                finish_all(ended)?
            } else {
                send_to_all(input()?, senders)?
            }
        }
        (None, Some(channel)) => {
            let mut opts = ChannelOptions::new(&args.end.agent, &channel);
            opts.pair_timeout = args.timeout.map(Duration::from_secs);
            opts.transport = args.end.transport;
            opts.live = args.live;
            opts.secret = args.end.secret.clone();
            opts.run = args.end.run.clone();
            send_to_all(input()?, vec![(channel, Sender::open(&opts)?)])?
        }
        (None, None) => unreachable!("checked above"),
    };
    let seconds = started.elapsed().as_secs_f64();
    for (peer, summary) in &summaries {
        let what = match &args.edge.workflow {
            Some(workflow) => format!(
                "to {peer} on edge {workflow}/{}",
                args.edge.edge.as_deref().unwrap_or_default()
            ),
            None => format!("on channel '{peer}'"),
        };
        let verified = if summary.stored {
            "stored by the agent for the receiver, which has not started: the agent verified it"
        } else {
            "the receiver verified it"
        };
        print_summary("sent", &what, summary, seconds, verified);
    }
    Ok(())
}
