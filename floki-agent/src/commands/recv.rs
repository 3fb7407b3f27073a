//! `floki-agent recv`: a plain channel, or this function's streams on a
//! workflow edge (blocking client: plain reads and writes).

use std::{
    io,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use floki_client::{ChannelOptions, Summary, blocking::Receiver, workflow};

use super::{
    channel::{edge_options, receive_into, receive_to_file},
    print_summary,
};
use crate::cli::RecvArgs;

pub fn recv(args: RecvArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let streams: Vec<(String, Receiver)> = match (
        edge_options(&args.edge, &args.end, args.timeout)?,
        &args.channel,
    ) {
        (Some(_), Some(_)) => bail!("give a CHANNEL or --workflow, not both"),
        (Some(opts), None) => workflow::blocking::receivers(&opts)?.1,
        (None, Some(channel)) => {
            let mut opts = ChannelOptions::new(&args.end.agent, channel);
            opts.window = args.window.map(|size| size.0);
            opts.data_addr = args.data_addr;
            opts.secret = args.end.secret.clone();
            opts.run = args.end.run.clone();
            opts.pair_timeout = args.timeout.map(Duration::from_secs);
            opts.transport = args.end.transport;
            vec![(channel.clone(), Receiver::connect(&opts)?)]
        }
        (None, None) => bail!("give a CHANNEL, or --workflow, --edge and --as"),
    };
    let summaries: Vec<(String, Summary)> = match (streams.len(), &args.out_dir) {
        (1, None) => {
            let (peer, mut rx) = streams.into_iter().next().expect("one stream");
            let summary = match &args.output {
                Some(path) => receive_to_file(rx, path)?,
                None => {
                    receive_into(&mut rx, &mut io::stdout().lock())?;
                    rx.finish()?
                }
            };
            vec![(peer, summary)]
        }
        (_, Some(dir)) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            // Every producer's stream at once: producers that wait on each
            // other (shuffle) must not wait on this consumer's order.
            std::thread::scope(|scope| {
                let handles: Vec<_> = streams
                    .into_iter()
                    .map(|(peer, rx)| {
                        let path = dir.join(&peer);
                        scope.spawn(move || {
                            receive_to_file(rx, &path)
                                .map(|summary| (peer.clone(), summary))
                                .with_context(|| format!("stream from {peer}"))
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|handle| handle.join().expect("a receiving thread does not panic"))
                    .collect::<anyhow::Result<Vec<_>>>()
            })?
        }
        (n, None) => bail!(
            "this consumer has {n} producers on the edge: give --out-dir DIR for one file each"
        ),
    };
    let seconds = started.elapsed().as_secs_f64();
    for (peer, summary) in &summaries {
        let what = match &args.edge.workflow {
            Some(workflow) => format!(
                "from {peer} on edge {workflow}/{}",
                args.edge.edge.as_deref().unwrap_or_default()
            ),
            None => format!("on channel '{peer}'"),
        };
        let verified = if summary.stored {
            "from the agent's store (the sender had finished); end mark and checksum verified"
        } else {
            "end mark and checksum verified"
        };
        print_summary("received", &what, summary, seconds, verified);
    }
    Ok(())
}
