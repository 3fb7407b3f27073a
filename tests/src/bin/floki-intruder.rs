//! `floki-intruder`: the hostile side of the security tests. It speaks to an
//! agent the way an outsider, a rogue function or a replaying peer would,
//! and prints one JSON line with what the agent answered (or did not).
//!
//! * `peer --addr A --request JSON [--secret S]`: one agent-to-agent
//!   request; without `--secret` it is sent right after the preamble, as an
//!   unauthenticated caller would.
//! * `start --addr A --stream JSON --secret S --bytes N`: opens a cross-node
//!   stream connection as an authenticated agent, starts it and writes N
//!   bytes, then reports whether the agent kept or closed it.
//! * `hello --agent A --hello JSON --hold SECS [--spam N]`: a raw client
//!   hello (one a real client would never send), held open; with `--spam`,
//!   then N `progress` reports, as an end that talks while it waits; prints
//!   the agent's answer and whether it closed the connection.
//! * `hold --addr A --count N --secs S`: N silent connections held S
//!   seconds; how many the other side closed.
//! * `flood --agent HOST:PORT --channel C --bytes N`: a plain channel's
//!   sender that ignores its credits: data frames as fast as the socket
//!   takes them; prints how much it wrote and the error that stopped it.
//! * `listen --addr A --secs N`: counts the connections a host gets.
//! * `connect --addr A`: whether a TCP connection gets through.

use std::time::Duration;

use anyhow::{Context as _, bail};
use floki_agent::agent::control::peers::{
    auth::{self, ClusterSecret},
    protocol::{START, write_preamble},
};
use floki_proto::control::{read_message, write_message};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    time::timeout,
};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let verb = args
        .next()
        .context("usage: floki-intruder peer|start ...")?;
    let mut flags = std::collections::HashMap::new();
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        flags.insert(flag, value);
    }
    let flag = |name: &str| flags.get(name).cloned();
    let addr = flag("--addr").unwrap_or_default();
    let secret = flag("--secret")
        .map(|s| ClusterSecret::parse(&s))
        .transpose()?;
    let report = match verb.as_str() {
        "peer" => {
            let request: Value = serde_json::from_str(&flag("--request").context("--request")?)?;
            peer(&addr, secret.as_ref(), &request).await?
        }
        "start" => {
            let stream: Value = serde_json::from_str(&flag("--stream").context("--stream")?)?;
            let bytes: usize = flag("--bytes").context("--bytes")?.parse()?;
            let secret = secret.context("start needs --secret")?;
            start(&addr, &secret, stream, bytes).await?
        }
        "hello" => {
            let hello: Value = serde_json::from_str(&flag("--hello").context("--hello")?)?;
            let hold: u64 = flag("--hold").context("--hold")?.parse()?;
            let spam: usize = flag("--spam").map_or(Ok(0), |n| n.parse())?;
            raw_hello(&flag("--agent").context("--agent")?, &hello, hold, spam).await?
        }
        "hold" => {
            let count: usize = flag("--count").context("--count")?.parse()?;
            let secs: u64 = flag("--secs").context("--secs")?.parse()?;
            hold(&addr, count, secs).await?
        }
        "flood" => {
            let bytes: u64 = flag("--bytes").context("--bytes")?.parse()?;
            flood(
                &flag("--agent").context("--agent")?,
                &flag("--channel").context("--channel")?,
                bytes,
            )
            .await?
        }
        "listen" => {
            let secs: u64 = flag("--secs").context("--secs")?.parse()?;
            count_connections(&addr, secs).await?
        }
        "connect" => match timeout(Duration::from_secs(3), TcpStream::connect(&addr)).await {
            Ok(Ok(_)) => json!({"connected": true}),
            Ok(Err(err)) => json!({"connected": false, "error": err.to_string()}),
            Err(_) => json!({"connected": false, "error": "timed out"}),
        },
        other => bail!("unknown verb {other}"),
    };
    println!("{report}");
    Ok(())
}

/// Connects and writes the agents' preamble; authenticates with `secret`.
async fn connect(addr: &str, secret: Option<&ClusterSecret>) -> anyhow::Result<(TcpStream, Value)> {
    let mut stream = TcpStream::connect(addr).await?;
    write_preamble(&mut stream).await?;
    let authenticated = match secret {
        Some(secret) => match auth::prove_to(&mut stream, secret).await {
            Ok(_) => json!(true),
            Err(err) => json!(err.to_string()),
        },
        None => json!(false),
    };
    Ok((stream, authenticated))
}

async fn peer(
    addr: &str,
    secret: Option<&ClusterSecret>,
    request: &Value,
) -> anyhow::Result<Value> {
    let (mut stream, authenticated) = connect(addr, secret).await?;
    if write_message(&mut stream, request).await.is_err() {
        return Ok(json!({"authenticated": authenticated, "answer": null, "sent": false}));
    }
    // Whatever comes back within 3 s, then whether it parses as an answer.
    let mut received = Vec::new();
    let _ = timeout(Duration::from_secs(3), stream.read_to_end(&mut received)).await;
    let answer = read_message::<_, Value>(&mut received.as_slice())
        .await
        .ok()
        .flatten()
        .filter(|v| v.get("answer").is_some());
    Ok(json!({
        "authenticated": authenticated,
        "answer": answer,
        "received_bytes": received.len(),
        "received": String::from_utf8_lossy(&received),
    }))
}

async fn start(
    addr: &str,
    secret: &ClusterSecret,
    stream_id: Value,
    bytes: usize,
) -> anyhow::Result<Value> {
    let (mut stream, authenticated) = connect(addr, Some(secret)).await?;
    write_message(
        &mut stream,
        &json!({"op": "open_stream", "stream": stream_id}),
    )
    .await?;
    let answer: Option<Value> = timeout(Duration::from_secs(5), read_message(&mut stream))
        .await
        .ok()
        .and_then(Result::ok)
        .flatten();
    stream.write_all(&[START]).await?;
    let wrote = stream.write_all(&vec![0xee; bytes]).await.is_ok();
    // Closed by the agent: EOF (or a reset) within 5 s.
    let mut buf = [0u8; 4096];
    let closed = loop {
        match timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => break true,
            Ok(Ok(_)) => continue,
            Err(_) => break false,
        }
    };
    Ok(json!({
        "authenticated": authenticated,
        "answer": answer,
        "wrote": wrote,
        "closed_by_agent": closed,
    }))
}

/// A hello on the agent's client protocol (TCP or `unix:PATH`), held open
/// `hold` seconds: what the agent answered first.
async fn raw_hello(agent: &str, hello: &Value, hold: u64, spam: usize) -> anyhow::Result<Value> {
    async fn exchange<S>(
        mut control: S,
        hello: &Value,
        hold: u64,
        spam: usize,
    ) -> anyhow::Result<Value>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        floki_proto::control::write_preamble(&mut control).await?;
        write_message(&mut control, hello).await?;
        let answer: Option<Value> = timeout(Duration::from_secs(5), read_message(&mut control))
            .await
            .ok()
            .and_then(Result::ok)
            .flatten();
        let mut sent = 0;
        for n in 0..spam {
            let report = json!({"event": "progress", "bytes": n});
            if write_message(&mut control, &report).await.is_err() {
                break;
            }
            sent += 1;
        }
        // Closed by the agent: EOF or an error within `hold` seconds.
        let mut rest = Vec::new();
        let closed = timeout(Duration::from_secs(hold), control.read_to_end(&mut rest))
            .await
            .is_ok();
        Ok(json!({"answer": answer, "spam_sent": sent, "closed_by_agent": closed}))
    }
    match agent.strip_prefix("unix:") {
        Some(path) => {
            exchange(
                tokio::net::UnixStream::connect(path).await?,
                hello,
                hold,
                spam,
            )
            .await
        }
        None => exchange(TcpStream::connect(agent).await?, hello, hold, spam).await,
    }
}

/// `count` silent connections to `addr`, held `secs` seconds: how many
/// the other side closed meanwhile.
async fn hold(addr: &str, count: usize, secs: u64) -> anyhow::Result<Value> {
    let mut held = Vec::new();
    for _ in 0..count {
        held.push(TcpStream::connect(addr).await?);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    let closed = futures::future::join_all(held.iter_mut().map(|stream| async move {
        let mut sink = Vec::new();
        tokio::time::timeout_at(deadline, stream.read_to_end(&mut sink))
            .await
            .is_ok()
    }))
    .await;
    Ok(json!({"held": count, "closed_by_peer": closed.iter().filter(|c| **c).count()}))
}

/// Listens on `addr` for `secs` seconds and counts who connects.
async fn count_connections(addr: &str, secs: u64) -> anyhow::Result<Value> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let mut connections = 0u64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while let Ok(accepted) = tokio::time::timeout_at(deadline, listener.accept()).await {
        if accepted.is_ok() {
            connections += 1;
        }
    }
    Ok(json!({"connections": connections}))
}

/// A sender that takes its pairing like any other, then ignores every
/// credit.
async fn flood(agent: &str, channel: &str, bytes: u64) -> anyhow::Result<Value> {
    use floki_proto::frame::{FrameHeader, FrameKind, control_frame};
    let mut control = TcpStream::connect(agent).await?;
    let cookie = floki_proto::netns::netns_cookie(&control).ok();
    floki_proto::control::write_preamble(&mut control).await?;
    let hello = json!({"channel": channel, "role": "send", "netns_cookie": cookie});
    write_message(&mut control, &hello).await?;
    let (peer, key) = loop {
        let message: Value = read_message(&mut control)
            .await?
            .context("the agent closed the control connection")?;
        if let (Some(peer), Some(key)) = (message["peer"].as_str(), message["key"].as_str()) {
            break (peer.to_owned(), key.to_owned());
        }
        if message.get("error").is_some() || message["op"] == "refused" {
            bail!("refused: {message}");
        }
    };
    let key = floki_proto::control::decode_key(&key).context("pairing key")?;
    let mut data = TcpStream::connect(&peer).await?;
    data.set_nodelay(true)?;
    let mut credit = [0u8; 16];
    data.read_exact(&mut credit).await?;
    data.write_all(&control_frame(FrameKind::Hello, &key))
        .await?;
    // Frames well inside the window, so that the receiver does not see
    // the first one already past it: what stops the flood is the point.
    let chunk = vec![0x5a; 64 << 10];
    let header = FrameHeader::new(FrameKind::Data, chunk.len() as u32).encode();
    let mut written = 0u64;
    let mut error = None;
    while written < bytes {
        let frame = [&header[..], &chunk[..]].concat();
        match timeout(Duration::from_secs(10), data.write_all(&frame)).await {
            Ok(Ok(())) => {
                written += chunk.len() as u64;
                if written.is_multiple_of(16 << 20) {
                    eprintln!("flood: {written} bytes written");
                }
            }
            Ok(Err(err)) => {
                error = Some(err.to_string());
                break;
            }
            Err(_) => {
                error = Some("blocked for 10 s".into());
                break;
            }
        }
    }
    drop(control);
    Ok(json!({"written": written, "error": error}))
}
