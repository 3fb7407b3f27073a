//! Prometheus metrics (`floki-agent run --metrics ADDR`, served at
//! `/metrics`). Totals are read from the channel core and the kernel programs at
//! each scrape, so they agree with `floki-agent status`; set-up latencies and
//! errors are recorded as they happen.

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use floki_proto::control::Refusal;

use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Bytes, header, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric, text::encode},
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::ConstGauge,
        histogram::Histogram,
    },
    registry::Registry,
};
use tokio::{net::TcpListener, sync::Semaphore};
use tracing::debug;

use crate::{
    agent::{
        Agent,
        backoff::AcceptBackoff,
        channels::{ChannelEvent, Phase},
        store::{StoreView, TierName},
    },
    status::Totals,
};

/// What is recorded as it happens: set-up latencies, refusals and failed
/// channels. The sessions count refusals; the rest comes from the channel
/// core's events ([`Metrics::observe`]).
pub struct Metrics {
    /// Channel set-up: from the second end's arrival to both ends told
    /// where their bytes go.
    setup_seconds: Histogram,
    /// Refused clients and failed channels, by kind.
    errors: Family<[(&'static str, String); 1], Counter>,
    /// Connections accepted from functions (both doors).
    client_connections: Counter,
    /// Requests (hellos, describes) read from them: more than connections
    /// when functions keep a connection from one channel to the next.
    client_requests: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            // 10 µs to ~2.6 s: a splice or ring set-up takes tens of µs, a
            // cross-node one a round trip.
            setup_seconds: Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(1e-5, 4.0, 10),
            ),
            errors: Family::default(),
            client_connections: Counter::default(),
            client_requests: Counter::default(),
        }
    }
}

impl Metrics {
    /// Records a refused client.
    pub fn count_refusal(&self, refusal: Refusal) {
        let kind = serde_json::to_value(refusal)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_else(|| "unknown".into());
        self.errors.get_or_create(&[("kind", kind)]).inc();
    }

    /// Records a connection accepted from a function.
    pub fn count_connection(&self) {
        self.client_connections.inc();
    }

    /// Records a request read from a function's connection.
    pub fn count_request(&self) {
        self.client_requests.inc();
    }

    /// Records a caller on the agents' port that did not prove the cluster
    /// secret.
    pub fn peer_refused(&self) {
        self.errors
            .get_or_create(&[("kind", "peer_unauthenticated".to_owned())])
            .inc();
    }

    /// Records what the channel core tells: set-up latencies, failed
    /// channels.
    pub fn observe(&self, event: &ChannelEvent) {
        match event {
            ChannelEvent::Paired { set_up, .. } => {
                self.setup_seconds.observe(set_up.as_secs_f64());
            }
            ChannelEvent::Finished(view) if view.phase == Phase::Failed => {
                self.errors
                    .get_or_create(&[("kind", "channel_failed".to_owned())])
                    .inc();
            }
            ChannelEvent::Finished(_) => {}
        }
    }
}

/// The metrics read at scrape time from the agent.
struct Snapshot(Arc<Agent>);

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Snapshot")
    }
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let agent = &self.0;
        let totals = super::status::totals(agent);
        let Totals {
            spliced_bytes,
            fallback_bytes,
            shm_bytes,
            forwarded_bytes,
            active_channels,
            done_channels,
            failed_channels,
            ..
        } = totals;

        labelled(
            &mut encoder,
            "floki_bytes",
            "Channel bytes by transport: splice (kernel-redirected), shm, tcp, and forwarded (producer writes the kernel redirected into a link to another node)",
            "transport",
            [
                ("splice", spliced_bytes),
                ("shm", shm_bytes),
                ("tcp", fallback_bytes),
                ("forwarded", forwarded_bytes),
            ]
            .map(|(label, value)| (label, ConstCounter::new(value))),
        )?;
        single(
            &mut encoder,
            "floki_channels_active",
            "Channels paired and not finished",
            ConstGauge::new(active_channels as i64),
        )?;
        labelled(
            &mut encoder,
            "floki_channels_finished",
            "Channels finished, by outcome",
            "outcome",
            [("done", done_channels), ("failed", failed_channels)]
                .map(|(label, value)| (label, ConstCounter::new(value))),
        )?;
        let ebpf = agent.datapath.is_ebpf();
        labelled(
            &mut encoder,
            "floki_datapath_mode",
            "1 for the datapath mode in use (ebpf or fallback)",
            "mode",
            [("ebpf", ebpf), ("fallback", !ebpf)]
                .map(|(label, on)| (label, ConstGauge::new(i64::from(on)))),
        )?;
        single(
            &mut encoder,
            "floki_kernel_passed_messages",
            "Writes of channel sockets the kernel program let through TCP (peer socket absent)",
            ConstCounter::new(totals.passed_msgs),
        )?;
        single(
            &mut encoder,
            "floki_kernel_redirect_errors",
            "Redirects the kernel refused",
            ConstCounter::new(totals.redirect_errors),
        )?;
        single(
            &mut encoder,
            "floki_kernel_eager_returns",
            "Eager hellos the kernel program returned to their sender because the receiver's socket was not spliced yet",
            ConstCounter::new(totals.eager_returns),
        )?;
        store(&mut encoder, &agent.store.view())
    }
}

/// The store's series: bytes and streams by tier, budgets, replays, refusals,
/// and bytes per workflow edge and tier.
fn store(encoder: &mut DescriptorEncoder, view: &StoreView) -> Result<(), std::fmt::Error> {
    let tiers = [TierName::Memory, TierName::Disk, TierName::S3];
    let per_tier = |bytes: bool| {
        tiers.map(|tier| {
            let held = view.streams.iter().filter(|s| s.tier == tier);
            let value = if bytes {
                held.map(|s| s.bytes).sum::<u64>()
            } else {
                held.count() as u64
            };
            (
                tier.label(),
                ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX)),
            )
        })
    };
    labelled(
        encoder,
        "floki_store_bytes",
        "Bytes of streams the store holds for consumers not yet there, by tier",
        "tier",
        per_tier(true),
    )?;
    labelled(
        encoder,
        "floki_store_streams",
        "Streams the store holds, by tier",
        "tier",
        per_tier(false),
    )?;
    labelled(
        encoder,
        "floki_store_budget_bytes",
        "The store's budget, by tier (--store-memory, --store-disk)",
        "tier",
        [("memory", view.memory.1), ("disk", view.disk.1)]
            .map(|(tier, n)| (tier, ConstGauge::new(i64::try_from(n).unwrap_or(i64::MAX)))),
    )?;
    single(
        encoder,
        "floki_store_replays",
        "Consumers served a stored stream",
        ConstCounter::new(view.replays),
    )?;
    single(
        encoder,
        "floki_store_refused_full",
        "Producers refused because every tier of the store was full",
        ConstCounter::new(view.full),
    )?;
    let mut family = encoder.encode_descriptor(
        "floki_store_edge_bytes",
        "Bytes the store holds per workflow edge and tier",
        None,
        prometheus_client::metrics::MetricType::Gauge,
    )?;
    let mut edges: std::collections::BTreeMap<(String, String, &str), u64> = Default::default();
    for stream in &view.streams {
        let (Some(workflow), Some(edge)) = (&stream.workflow, stream.name.split('/').nth(1)) else {
            continue;
        };
        *edges
            .entry((workflow.clone(), edge.to_owned(), stream.tier.label()))
            .or_default() += stream.bytes;
    }
    for ((workflow, edge, tier), bytes) in edges {
        let labels = [
            ("workflow", workflow.as_str()),
            ("edge", edge.as_str()),
            ("tier", tier),
        ];
        ConstGauge::new(i64::try_from(bytes).unwrap_or(i64::MAX))
            .encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// One series of a metric without labels.
fn single<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric: M,
) -> Result<(), std::fmt::Error> {
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// One series per value of `label`.
fn labelled<M: EncodeMetric, const N: usize>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &'static str,
    series: [(&'static str, M); N],
) -> Result<(), std::fmt::Error> {
    let Some((_, first)) = series.first() else {
        return Ok(());
    };
    let mut family = encoder.encode_descriptor(name, help, None, first.metric_type())?;
    for (value, metric) in &series {
        metric.encode(family.encode_family(&[(label, *value)])?)?;
    }
    Ok(())
}

/// The registry of one agent's metrics.
fn registry(agent: Arc<Agent>) -> Registry {
    let mut registry = Registry::default();
    registry.register(
        "floki_channel_setup_seconds",
        "Channel set-up latency: from the second end's arrival to both ends told where their bytes go",
        agent.metrics.setup_seconds.clone(),
    );
    registry.register(
        "floki_errors",
        "Refused clients (by refusal kind) and failed channels (channel_failed)",
        agent.metrics.errors.clone(),
    );
    registry.register(
        "floki_client_connections",
        "Connections accepted from functions, on the channel port and the Unix socket",
        agent.metrics.client_connections.clone(),
    );
    registry.register(
        "floki_client_requests",
        "Requests (hellos, describes) from functions: more than connections when they keep one from a channel to the next",
        agent.metrics.client_requests.clone(),
    );
    registry.register_collector(Box::new(Snapshot(agent)));
    registry
}

/// Scrapers served at once; more are closed at once.
const MAX_SCRAPERS: usize = 64;
/// A scraper has this long to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// A metrics connection lives at most this long, busy or idle.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// Serves `/metrics` on `listener` until the task is aborted: at most
/// [`MAX_SCRAPERS`] connections, each with a header timeout and a lifetime,
/// so idle or slow connections cannot pile up.
pub async fn serve(listener: TcpListener, agent: Arc<Agent>) {
    let registry = Arc::new(registry(agent));
    let scrapers = Arc::new(Semaphore::new(MAX_SCRAPERS));
    let mut backoff = AcceptBackoff::new("metrics");
    loop {
        let (stream, from) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                backoff.failed(&err).await;
                continue;
            }
        };
        backoff.succeeded();
        let Ok(permit) = scrapers.clone().try_acquire_owned() else {
            debug!(%from, "too many metrics connections; closed");
            continue;
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let registry = registry.clone();
                async move { Ok::<_, Infallible>(answer(&registry, &request)) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(CONNECTION_LIFETIME, connection).await {
                Ok(Err(err)) => debug!(%from, %err, "metrics connection ended"),
                Err(_) => debug!(%from, "metrics connection closed at the end of its lifetime"),
                Ok(Ok(())) => {}
            }
            drop(permit);
        });
    }
}

fn answer<B>(registry: &Registry, request: &Request<B>) -> Response<Full<Bytes>> {
    let reply = |status, kind: &'static str, body: String| {
        Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, kind)
            .body(Full::new(Bytes::from(body)))
            .expect("static response parts")
    };
    if request.uri().path() != "/metrics" {
        return reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "Floki serves its metrics at /metrics\n".into(),
        );
    }
    let mut text = String::new();
    match encode(&mut text, registry) {
        Ok(()) => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            text,
        ),
        Err(err) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            format!("encoding the metrics failed: {err}\n"),
        ),
    }
}

/// Binds the metrics address, naming it in the error.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, crate::agent::AgentError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| crate::agent::AgentError::Metrics { addr, source })
}
