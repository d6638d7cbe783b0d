//! `/metrics`: a node's figures ([`pagemesh::Node::metrics`]) in the Prometheus text format, over
//! HTTP.
//!
//! # Encoding
//!
//! The library hands out plain snapshots ([`NodeMetrics`]); this module turns one into text with
//! the `prometheus-client` crate (its Prometheus 0.0.4 text encoder, through a [`Collector`] over
//! the snapshot), so names, escaping, `_total` suffixes and cumulative histogram buckets are the
//! reference client's, not hand-formatted. The encoding lives here, in the tools, so an
//! application that embeds pagemesh compiles none of it.
//!
//! Series (labels in braces; `database` is the name it was opened or replicated under):
//!
//! | name | type | labels |
//! | --- | --- | --- |
//! | `pagemesh_commits_total`, `pagemesh_commit_failures_total` | counter | database, durability |
//! | `pagemesh_commit_latency_seconds` | histogram | database, durability |
//! | `pagemesh_apply_groups_total`, `pagemesh_apply_records_total` | counter | database |
//! | `pagemesh_apply_records_per_group` | histogram | database |
//! | `pagemesh_ring_fill_ratio`, `pagemesh_ring_slots` | gauge | database |
//! | `pagemesh_committed_lsn`, `pagemesh_applied_lsn`, `pagemesh_durable_lsn` | gauge | database, role |
//! | `pagemesh_replication_lag_pages`, `_bytes`, `_seconds` | gauge | database, replica, replica_node |
//! | `pagemesh_replica_state` | gauge (1 for the current state) | database, replica, replica_node, state |
//! | `pagemesh_subscription_connected` | gauge | database, upstream |
//! | `pagemesh_subscription_links_total`, `_restores_total`, `_grafts_total` | counter | database |
//! | `pagemesh_network_received_bytes_total`, `pagemesh_network_sent_bytes_total` | counter | |
//! | `pagemesh_refused_handshakes_total`, `pagemesh_refused_frames_total`, `pagemesh_link_errors_total` | counter | reason |
//!
//! Lag is the source's view: a node reports how far each replica of the databases it serves is
//! behind, from their acks; a replica that detached stays listed (state `down`) with its growing
//! lag until it attaches again.
//!
//! # Serving
//!
//! A std `TcpListener` and [`WORKERS`] threads that each accept and answer one request at a
//! time, then close the connection. That is all a scraper needs, and every resource is bounded
//! by construction: a request head of at most [`REQUEST_HEAD_MAX`] bytes, read within
//! [`REQUEST_DEADLINE`] *in total* (a per-read timeout alone would let a slowloris that sends a
//! byte a second hold a worker forever), a write timeout, no keep-alive, no request body. A
//! hostile client can hold at most one worker for one deadline; the others keep serving. A
//! crate (tiny_http) was considered: it spawns threads per connection or grows a pool, and
//! bounding its request reading would take as much code as this module's server, so the
//! dependency would buy nothing.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pagemesh::{DatabaseReport, NodeMetrics};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeGaugeValue, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// Threads answering requests.
pub const WORKERS: usize = 2;
/// The most bytes a request's head (request line and headers) may have.
pub const REQUEST_HEAD_MAX: usize = 8 << 10;
/// The time a client has to send its whole request head.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(2);
/// The time a client has to take the response.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

type Labels = Vec<(&'static str, String)>;

/// The Prometheus text for `metrics`.
pub fn encode(metrics: NodeMetrics) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Snapshot(metrics)));
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)?;
    Ok(text)
}

/// One node's snapshot, encoded on a scrape.
#[derive(Debug)]
struct Snapshot(NodeMetrics);

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let databases = &self.0.databases;
        encode_commits(&mut encoder, databases)?;
        encode_store(&mut encoder, databases)?;
        encode_lag(&mut encoder, databases)?;
        encode_subscriptions(&mut encoder, databases)?;
        encode_network(&mut encoder, &self.0)
    }
}

fn gauges<V: EncodeGaugeValue>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Labels, V)],
) -> std::fmt::Result {
    if rows.is_empty() {
        return Ok(());
    }
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in rows {
        metric.encode_family(labels)?.encode_gauge(value)?;
    }
    Ok(())
}

fn counters(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Labels, u64)],
) -> std::fmt::Result {
    if rows.is_empty() {
        return Ok(());
    }
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in rows {
        (metric.encode_family(labels)?).encode_counter::<NoLabelSet, _, u64>(value, None)?;
    }
    Ok(())
}

fn histograms(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Labels, &pagemesh::core::Histogram)],
) -> std::fmt::Result {
    if rows.is_empty() {
        return Ok(());
    }
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (labels, histogram) in rows {
        let buckets: Vec<(f64, u64)> = (histogram.bounds.iter().copied())
            .zip(histogram.counts.iter().copied())
            .collect();
        (metric.encode_family(labels)?).encode_histogram::<NoLabelSet>(
            histogram.sum,
            histogram.count,
            &buckets,
            None,
        )?;
    }
    Ok(())
}

fn database(report: &DatabaseReport) -> Labels {
    vec![("database", report.name.clone())]
}

fn encode_commits(
    encoder: &mut DescriptorEncoder,
    databases: &[DatabaseReport],
) -> std::fmt::Result {
    let by_durability = || {
        databases.iter().flat_map(|report| {
            report.metrics.commits.iter().map(move |commits| {
                let mut labels = database(report);
                labels.push(("durability", commits.durability.to_string()));
                (labels, commits)
            })
        })
    };
    let rows: Vec<_> = by_durability().map(|(l, c)| (l, c.commits)).collect();
    counters(
        encoder,
        "pagemesh_commits",
        "Commits that returned Ok, by durability.",
        &rows,
    )?;
    let rows: Vec<_> = by_durability().map(|(l, c)| (l, c.failures)).collect();
    counters(
        encoder,
        "pagemesh_commit_failures",
        "Commits whose wait failed (replication timeout, conflict, poisoned database), by durability.",
        &rows,
    )?;
    let rows: Vec<_> = by_durability()
        .map(|(l, c)| (l, &c.latency_seconds))
        .collect();
    histograms(
        encoder,
        "pagemesh_commit_latency_seconds",
        "Time from commit to its durability holding, by durability.",
        &rows,
    )
}

fn encode_store(encoder: &mut DescriptorEncoder, databases: &[DatabaseReport]) -> std::fmt::Result {
    let each = |value: fn(&DatabaseReport) -> u64| -> Vec<(Labels, u64)> {
        databases.iter().map(|r| (database(r), value(r))).collect()
    };
    counters(
        encoder,
        "pagemesh_apply_groups",
        "LMDB write transactions the applier committed.",
        &each(|r| r.metrics.groups),
    )?;
    counters(
        encoder,
        "pagemesh_apply_records",
        "Records applied.",
        &each(|r| r.metrics.records),
    )?;
    let rows: Vec<_> = (databases.iter())
        .map(|r| (database(r), &r.metrics.records_per_group))
        .collect();
    histograms(
        encoder,
        "pagemesh_apply_records_per_group",
        "Records per applied group.",
        &rows,
    )?;
    let rows: Vec<_> = (databases.iter())
        .map(|r| (database(r), r.metrics.ring_fill()))
        .collect();
    gauges(
        encoder,
        "pagemesh_ring_fill_ratio",
        "Share of the log ring's pages in use (0 to 1).",
        &rows,
    )?;
    gauges(
        encoder,
        "pagemesh_ring_slots",
        "Pages the log ring holds.",
        &each(|r| r.metrics.ring_slots),
    )?;
    let with_role = |value: fn(&DatabaseReport) -> u64| -> Vec<(Labels, u64)> {
        (databases.iter())
            .map(|r| {
                let mut labels = database(r);
                labels.push(("role", r.role.to_string()));
                (labels, value(r))
            })
            .collect()
    };
    gauges(
        encoder,
        "pagemesh_committed_lsn",
        "Every page below this is committed in the log ring (on a replica: received).",
        &with_role(|r| r.metrics.committed_lsn),
    )?;
    gauges(
        encoder,
        "pagemesh_applied_lsn",
        "Every page below this is applied (visible to readers).",
        &with_role(|r| r.metrics.applied_lsn),
    )?;
    gauges(
        encoder,
        "pagemesh_durable_lsn",
        "Every page below this is on disk in the log ring.",
        &with_role(|r| r.metrics.durable_lsn),
    )
}

fn encode_lag(encoder: &mut DescriptorEncoder, databases: &[DatabaseReport]) -> std::fmt::Result {
    let replicas = || {
        databases.iter().flat_map(|report| {
            report.metrics.replicas.iter().map(move |lag| {
                let mut labels = database(report);
                labels.push(("replica", lag.name.clone()));
                labels.push(("replica_node", lag.node.to_string()));
                (labels, lag)
            })
        })
    };
    let rows: Vec<_> = replicas().map(|(l, lag)| (l, lag.lag_pages)).collect();
    gauges(
        encoder,
        "pagemesh_replication_lag_pages",
        "Pages this node committed that the replica has not received.",
        &rows,
    )?;
    let rows: Vec<_> = replicas().map(|(l, lag)| (l, lag.lag_bytes)).collect();
    gauges(
        encoder,
        "pagemesh_replication_lag_bytes",
        "Bytes of pages this node committed that the replica has not received.",
        &rows,
    )?;
    let rows: Vec<_> = replicas().map(|(l, lag)| (l, lag.lag_seconds)).collect();
    gauges(
        encoder,
        "pagemesh_replication_lag_seconds",
        "How long ago the first page the replica lacks was applied here (0 when it lacks none).",
        &rows,
    )?;
    let states = [
        pagemesh::core::ReplicaState::Sync,
        pagemesh::core::ReplicaState::Async,
        pagemesh::core::ReplicaState::Down,
    ];
    let rows: Vec<_> = replicas()
        .flat_map(|(labels, lag)| {
            states.iter().map(move |&state| {
                let mut labels = labels.clone();
                labels.push(("state", state.name().to_string()));
                (labels, u64::from(lag.state == state))
            })
        })
        .collect();
    gauges(
        encoder,
        "pagemesh_replica_state",
        "1 for the replica's state (sync, async or down), 0 for the others.",
        &rows,
    )
}

fn encode_subscriptions(
    encoder: &mut DescriptorEncoder,
    databases: &[DatabaseReport],
) -> std::fmt::Result {
    let subscriptions: Vec<_> = (databases.iter())
        .filter_map(|r| r.subscription.as_ref().map(|s| (database(r), s)))
        .collect();
    let rows: Vec<_> = (subscriptions.iter())
        .map(|(labels, status)| {
            let mut labels = labels.clone();
            let upstream = status.upstream.map(|a| a.to_string()).unwrap_or_default();
            labels.push(("upstream", upstream));
            (labels, u64::from(status.connected))
        })
        .collect();
    gauges(
        encoder,
        "pagemesh_subscription_connected",
        "1 while the replica's link to its upstream is up.",
        &rows,
    )?;
    let each = |value: fn(&pagemesh::net::SubscriptionStatus) -> u64| -> Vec<(Labels, u64)> {
        (subscriptions.iter())
            .map(|(labels, status)| (labels.clone(), value(status)))
            .collect()
    };
    counters(
        encoder,
        "pagemesh_subscription_links",
        "Links the replica established to its upstreams.",
        &each(|s| s.links),
    )?;
    counters(
        encoder,
        "pagemesh_subscription_restores",
        "Snapshots the replica restored.",
        &each(|s| s.restores),
    )?;
    counters(
        encoder,
        "pagemesh_subscription_grafts",
        "Times the replica moved to another holder because its own stalled.",
        &each(|s| s.grafts),
    )
}

fn encode_network(encoder: &mut DescriptorEncoder, metrics: &NodeMetrics) -> std::fmt::Result {
    let network = &metrics.network;
    counters(
        encoder,
        "pagemesh_network_received_bytes",
        "Bytes read from every link.",
        &[(Vec::new(), network.bytes_in)],
    )?;
    counters(
        encoder,
        "pagemesh_network_sent_bytes",
        "Bytes written to every link.",
        &[(Vec::new(), network.bytes_out)],
    )?;
    let by_reason = |rows: &[(&'static str, u64)]| -> Vec<(Labels, u64)> {
        (rows.iter())
            .map(|(reason, count)| (vec![("reason", reason.to_string())], *count))
            .collect()
    };
    counters(
        encoder,
        "pagemesh_refused_handshakes",
        "Connections refused or closed before they authenticated, by reason.",
        &by_reason(&network.refused_handshakes),
    )?;
    counters(
        encoder,
        "pagemesh_refused_frames",
        "Links closed because of a frame they carried, by reason.",
        &by_reason(&network.refused_frames),
    )?;
    counters(
        encoder,
        "pagemesh_link_errors",
        "Links that ended on any other error, by kind.",
        &by_reason(&network.link_errors),
    )
}

/// Serves `GET /metrics` on a listener until dropped; see the module docs.
pub struct MetricsServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
}

/// What produces the text of one scrape.
pub type Scrape = Arc<dyn Fn() -> Result<String, std::fmt::Error> + Send + Sync>;

impl MetricsServer {
    /// Listens on `addr` (port 0: any free port) and answers with `scrape()`'s text.
    pub fn start(addr: SocketAddr, scrape: Scrape) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut workers = Vec::with_capacity(WORKERS);
        for index in 0..WORKERS {
            let listener = listener.try_clone()?;
            let (stop, scrape) = (Arc::clone(&stop), Arc::clone(&scrape));
            let worker = std::thread::Builder::new()
                .name(format!("pagemesh-metrics-{index}"))
                .spawn(move || serve(&listener, &stop, &scrape))?;
            workers.push(worker);
        }
        tracing::info!(%addr, "serving metrics on /metrics");
        Ok(Self {
            addr,
            stop,
            workers,
        })
    }

    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Each worker is blocked in accept: one connection each wakes them.
        for _ in &self.workers {
            let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        }
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

fn serve(listener: &TcpListener, stop: &AtomicBool, scrape: &Scrape) {
    while !stop.load(Ordering::Relaxed) {
        let (stream, peer) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "metrics: accept failed");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if stop.load(Ordering::Relaxed) {
            return;
        }
        if let Err(error) = answer(stream, scrape) {
            tracing::debug!(%peer, %error, "metrics: request dropped");
        }
    }
}

/// What a request asked for.
#[derive(Debug, PartialEq, Eq)]
enum Request {
    Metrics,
    NotFound,
    BadMethod,
    Malformed,
    TooLarge,
}

/// Reads one request head within [`REQUEST_DEADLINE`] and answers it.
fn answer(mut stream: TcpStream, scrape: &Scrape) -> std::io::Result<()> {
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let request = read_request(&mut stream)?;
    let (status, body) = match request {
        Request::Metrics => match scrape() {
            Ok(text) => ("200 OK", text),
            Err(_) => ("500 Internal Server Error", "encoding failed\n".into()),
        },
        Request::NotFound => ("404 Not Found", "only /metrics is served\n".into()),
        Request::BadMethod => ("405 Method Not Allowed", "only GET\n".into()),
        Request::Malformed => ("400 Bad Request", "malformed request\n".into()),
        Request::TooLarge => (
            "431 Request Header Fields Too Large",
            "request too large\n".into(),
        ),
    };
    let content_type = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    stream.flush()
}

/// Reads until the blank line that ends the head, at most [`REQUEST_HEAD_MAX`] bytes, within
/// [`REQUEST_DEADLINE`] in total; classifies the request line.
fn read_request(stream: &mut TcpStream) -> std::io::Result<Request> {
    let deadline = Instant::now() + REQUEST_DEADLINE;
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() >= REQUEST_HEAD_MAX {
            return Ok(Request::TooLarge);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        stream.set_read_timeout(Some(left))?;
        let room = (REQUEST_HEAD_MAX - head.len()).min(chunk.len());
        let read = stream.read(&mut chunk[..room])?;
        if read == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.extend_from_slice(&chunk[..read]);
    }
    Ok(classify(&head))
}

fn classify(head: &[u8]) -> Request {
    let Some(line) = head.split(|&b| b == b'\r').next() else {
        return Request::Malformed;
    };
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Request::Malformed;
    };
    if !version.starts_with(b"HTTP/1.") {
        return Request::Malformed;
    }
    if method != b"GET" {
        return Request::BadMethod;
    }
    let path = target.split(|&b| b == b'?').next().unwrap_or_default();
    if path == b"/metrics" {
        Request::Metrics
    } else {
        Request::NotFound
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_well_formed_get_of_metrics_is_served() {
        assert_eq!(
            classify(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Request::Metrics
        );
        assert_eq!(
            classify(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"),
            Request::Metrics
        );
        assert_eq!(classify(b"GET / HTTP/1.1\r\n\r\n"), Request::NotFound);
        assert_eq!(
            classify(b"POST /metrics HTTP/1.1\r\n\r\n"),
            Request::BadMethod
        );
        assert_eq!(classify(b"\x00\xff garbage\r\n\r\n"), Request::Malformed);
        assert_eq!(classify(b"GET /metrics\r\n\r\n"), Request::Malformed);
    }
}
