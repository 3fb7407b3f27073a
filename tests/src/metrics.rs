//! Reading an agent's Prometheus metrics as an operator's scraper would.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    time::Duration,
};

use crate::{agent::AgentOptions, node::TestNode};

/// `GET path` over HTTP/1.1 from `addr`: (status line, body).
pub fn get(addr: &str, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(addr).expect("connecting to the metrics address");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    let (head, body) = reply.split_once("\r\n\r\n").expect("an HTTP reply");
    (
        head.lines().next().unwrap_or("").to_owned(),
        body.to_owned(),
    )
}

/// The value of the sample `series` (name with labels, as exposed).
pub fn sample(body: &str, series: &str) -> f64 {
    body.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {series} in:\n{body}"))
}

/// A node whose agent serves metrics, and their `host:port`.
pub fn node_with_metrics(label: &str) -> (TestNode, String) {
    let node = TestNode::start(
        label,
        AgentOptions {
            extra: vec!["--metrics".into(), "127.0.0.1:0".into()],
            ..AgentOptions::default()
        },
    );
    let addr = address(&node.agent.status());
    (node, addr)
}

/// The `host:port` of the metrics an agent's status names.
pub fn address(status: &serde_json::Value) -> String {
    status["metrics"]
        .as_str()
        .and_then(|url| url.strip_prefix("http://"))
        .and_then(|rest| rest.strip_suffix("/metrics"))
        .expect("status names the metrics URL")
        .to_owned()
}
