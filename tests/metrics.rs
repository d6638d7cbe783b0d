//! `/metrics` and the node configuration, over real `pagemesh node` processes.
//!
//! - Lag: the test process is the origin (a `Node` serving a database, kept under load by a
//!   writer thread); process `a` replicates it, relays it and serves `/metrics`; process `b`
//!   replicates from `a`. `a`'s `/metrics`, scraped over HTTP, report `b`'s lag. `b` is stopped
//!   with SIGSTOP: the lag gauges (pages, bytes, seconds) rise and its state turns `down` once
//!   `a` drops the silent link. `b` is continued with SIGCONT and the load stops: the gauges fall
//!   back to zero and `b` is attached again.
//! - A hostile scraper (garbage, an oversized head, slowloris connections) is answered with an
//!   error or dropped, and the node keeps serving scrapes meanwhile and after.
//! - `--check-config`: a complete configuration passes; an unknown key is refused with its name
//!   and line; a bad address, a key of the other role, an impossible durability and a nice
//!   value out of range are refused. A node's `apply_nice` reaches its applier thread (read
//!   back from `/proc`).
//!
//! Every wait is bounded by a generous deadline and fails with what it waited for; nothing
//! asserts how fast anything happens.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use pagemesh::core::{Durability, Options, WriteBatch};
use pagemesh::Node;
use pagemesh_testkit::threads::{nice_of, own_nice};
use serde_json::Value;

/// The bound on anything that should eventually happen.
const PATIENCE: Duration = Duration::from_secs(60);

/// A `pagemesh node` child with its stdout lines; killed on drop.
struct NodeProcess {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.signal("CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl NodeProcess {
    fn start(config: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_pagemesh"))
            .args(["node", "--config", config.to_str().unwrap()])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start pagemesh node");
        let stdout = child.stdout.take().expect("piped stdout");
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    /// The text after `marker` in the first line (from now on) that holds it.
    fn line_after(&self, marker: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = (self.lines.recv_timeout(left))
                .unwrap_or_else(|_| panic!("no line with {marker:?} from the node"));
            if let Some((_, after)) = line.split_once(marker) {
                return after.trim().to_string();
            }
        }
    }

    fn signal(&self, signal: &str) {
        let _ = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status();
    }
}

/// `GET path` over a fresh connection: the status code and the body.
fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = (head.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_string()))
}

/// A successful scrape's text.
fn scrape(addr: SocketAddr) -> String {
    let (status, body) = get(addr, "/metrics").expect("scrape");
    assert_eq!(status, 200, "scrape answered {status}: {body}");
    body
}

/// The value of the series `name` whose labels include every one of `labels` (`key="value"`).
fn value(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        let (series, value) = rest.rsplit_once(' ')?;
        let matches = (series.is_empty() || series.starts_with('{'))
            && labels.iter().all(|label| series.contains(label));
        matches.then(|| value.parse().ok()).flatten()
    })
}

/// Scrapes until `done` holds for a scrape's text; returns that text.
fn scrape_until(addr: SocketAddr, what: &str, mut done: impl FnMut(&str) -> bool) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let text = scrape(addr);
        if done(&text) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; last scrape:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn replica_config(
    name: &str,
    dir: &Path,
    source: SocketAddr,
    uuid: uuid::Uuid,
    metrics: bool,
) -> String {
    let metrics = if metrics {
        "metrics_listen = \"127.0.0.1:0\"\n"
    } else {
        ""
    };
    format!(
        "name = \"{name}\"\nlisten = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n{metrics}\n\
         [[databases]]\nname = \"copy\"\nrole = \"replica\"\nsource = \"{source}\"\nuuid = \"{uuid}\"\nring_pages = 1024\n",
        dir.join(name).display(),
    )
}

/// Commits small batches until `stop`.
fn load(db: pagemesh::core::Database, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut commits = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let mut batch = WriteBatch::new();
            for i in 0..8u64 {
                let key = format!("k{:08}", commits * 8 + i);
                batch.put("t", key.as_bytes(), &[7u8; 300]).unwrap();
            }
            db.commit(&batch, Durability::Memory).unwrap();
            commits += 1;
            std::thread::sleep(Duration::from_millis(2));
        }
        commits
    })
}

#[test]
fn lag_gauges_rise_while_a_replica_is_stopped_and_fall_to_zero_after_it_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Node::builder("origin", dir.path().join("origin"))
        .listen("127.0.0.1:0".parse().unwrap())
        .open()
        .unwrap();
    let db = origin.open_database("db", Options::new()).unwrap();
    origin.serve(&db, 0);
    let origin_addr = origin.local_addr().unwrap();

    let config_a = config_file(
        dir.path(),
        "a.toml",
        &replica_config("a", dir.path(), origin_addr, db.uuid(), true),
    );
    let a = NodeProcess::start(&config_a);
    let a_addr: SocketAddr = a.line_after("listening on").parse().unwrap();
    let metrics_addr: SocketAddr = (a.line_after("metrics on http://"))
        .trim_end_matches("/metrics")
        .parse()
        .unwrap();

    let config_b = config_file(
        dir.path(),
        "b.toml",
        &replica_config("b", dir.path(), a_addr, db.uuid(), false),
    );
    let b = NodeProcess::start(&config_b);
    let b_labels = ["database=\"copy\"", "replica=\"b\""];
    let lag = |text: &str, gauge: &str| {
        value(
            text,
            &format!("pagemesh_replication_lag_{gauge}"),
            &b_labels,
        )
    };

    let stop = Arc::new(AtomicBool::new(false));
    let writer = load(db.clone(), Arc::clone(&stop));
    scrape_until(metrics_addr, "b attached to a and following", |text| {
        value(
            text,
            "pagemesh_replica_state",
            &[&b_labels[..], &["state=\"async\""]].concat(),
        ) == Some(1.0)
            && value(text, "pagemesh_applied_lsn", &["database=\"copy\""])
                .is_some_and(|lsn| lsn > 0.0)
    });

    b.signal("STOP");
    let risen = scrape_until(
        metrics_addr,
        "b's lag to rise while it is stopped",
        |text| {
            lag(text, "pages").is_some_and(|pages| pages >= 64.0)
                && lag(text, "seconds").is_some_and(|seconds| seconds >= 1.0)
        },
    );
    let pages = lag(&risen, "pages").unwrap();
    assert_eq!(
        lag(&risen, "bytes"),
        Some(pages * 4096.0),
        "bytes are pages of 4 KiB"
    );
    scrape_until(metrics_addr, "a to see b's link go down", |text| {
        value(
            text,
            "pagemesh_replica_state",
            &[&b_labels[..], &["state=\"down\""]].concat(),
        ) == Some(1.0)
            && lag(text, "pages").is_some_and(|now| now >= pages)
    });

    b.signal("CONT");
    stop.store(true, Ordering::Relaxed);
    let commits = writer.join().unwrap();
    assert!(commits > 0);
    let fallen = scrape_until(metrics_addr, "b's lag to fall back to zero", |text| {
        lag(text, "pages") == Some(0.0)
            && lag(text, "bytes") == Some(0.0)
            && lag(text, "seconds") == Some(0.0)
            && value(
                text,
                "pagemesh_replica_state",
                &[&b_labels[..], &["state=\"down\""]].concat(),
            ) == Some(0.0)
    });
    // The rest of the node's figures are there too.
    let received = value(&fallen, "pagemesh_network_received_bytes_total", &[]).unwrap();
    assert!(received > 0.0, "a received the origin's pages");
    assert!(
        value(
            &fallen,
            "pagemesh_apply_groups_total",
            &["database=\"copy\""]
        )
        .unwrap()
            > 0.0
    );
    assert!(fallen.contains("pagemesh_refused_handshakes_total{reason=\"handshake_failed\"}"));
    assert!(
        fallen.contains("pagemesh_apply_records_per_group_bucket{database=\"copy\",le=\"+Inf\"}")
    );
    drop(b);
    drop(a);
}

/// Reads until the peer closes (or resets) the connection; `false` if it is still open at the
/// deadline.
fn closed_within(stream: &mut TcpStream, bound: Duration) -> bool {
    let deadline = Instant::now() + bound;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
    }
    false
}

#[test]
fn a_hostile_scraper_is_dropped_and_the_node_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(
        dir.path(),
        "n.toml",
        &format!(
            "name = \"n\"\ndata_dir = \"{}\"\nmetrics_listen = \"127.0.0.1:0\"\n",
            dir.path().join("n").display()
        ),
    );
    let node = NodeProcess::start(&config);
    let addr: SocketAddr = (node.line_after("metrics on http://"))
        .trim_end_matches("/metrics")
        .parse()
        .unwrap();
    scrape(addr);

    // Slowloris: heads that trickle in, a byte at a time, never finished.
    let slow: Vec<_> = (0..3)
        .map(|_| {
            std::thread::spawn(move || {
                let mut stream = TcpStream::connect(addr).unwrap();
                for byte in b"GET /metrics HTTP/1.1\r\nX: ".iter().cycle().take(40) {
                    if stream.write_all(&[*byte]).is_err() {
                        return true; // closed on us: dropped
                    }
                    std::thread::sleep(Duration::from_millis(250));
                }
                closed_within(&mut stream, PATIENCE)
            })
        })
        .collect();
    // Meanwhile: garbage, an oversized head, a wrong method and path, and real scrapes.
    let mut garbage = TcpStream::connect(addr).unwrap();
    garbage.write_all(b"\x00\xff\x13 nonsense\r\n\r\n").unwrap();
    let mut answer = String::new();
    let _ = garbage.read_to_string(&mut answer);
    assert!(
        answer.starts_with("HTTP/1.1 400"),
        "garbage got: {answer:?}"
    );

    let mut huge = TcpStream::connect(addr).unwrap();
    let _ = huge.write_all(b"GET /metrics HTTP/1.1\r\n");
    let _ = huge.write_all(&vec![b'X'; 1 << 20]); // may fail once the node hangs up
    assert!(
        closed_within(&mut huge, PATIENCE),
        "an oversized head is dropped"
    );

    assert_eq!(get(addr, "/").unwrap().0, 404);
    assert_eq!(
        get(addr, "/metrics").unwrap().0,
        200,
        "scrapes go on meanwhile"
    );
    for dropped in slow {
        assert!(dropped.join().unwrap(), "a slowloris connection is dropped");
    }
    let text = scrape(addr);
    assert!(value(&text, "pagemesh_network_sent_bytes_total", &[]).is_some());
    drop(node);
}

/// Writes a node's configuration `text` to `dir/file`; returns its path.
fn config_file(dir: &Path, file: &str, text: &str) -> PathBuf {
    let path = dir.join(file);
    std::fs::write(&path, text).unwrap();
    path
}

/// `pagemesh node --check-config` on `text`: exit success and the output.
fn check_config(dir: &Path, text: &str) -> (bool, String) {
    let path = config_file(dir, "check.toml", text);
    let output = Command::new(env!("CARGO_BIN_EXE_pagemesh"))
        .args(["node", "--check-config", path.to_str().unwrap()])
        .output()
        .expect("run pagemesh node --check-config");
    let text = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}

/// The README's complete configuration (the first TOML block of its "Running a node"
/// section), with the test's data directory and secret file.
fn readme_example(data_dir: &Path, secret: &Path) -> String {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    let section = readme
        .split_once("### Running a node")
        .expect("the README's node section")
        .1;
    let block = section.split_once("```toml\n").expect("a TOML block").1;
    let example = block.split_once("```").expect("the block's end").0;
    example
        .replace("/var/lib/pagemesh", &data_dir.display().to_string())
        .replace("/etc/pagemesh/secret", &secret.display().to_string())
}

#[test]
fn check_config_passes_a_complete_file_and_names_what_is_wrong_in_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "s3cret\n").unwrap();
    let full = readme_example(&dir.path().join("data"), &secret);
    let (ok, output) = check_config(dir.path(), &full);
    assert!(ok, "{output}");
    assert!(
        output.contains("valid: node primary, 2 database(s)"),
        "{output}"
    );
    assert!(!dir.path().join("data").exists(), "checking starts nothing");

    // An unknown key: named, with its line.
    let unknown = full.replacen(
        "sync_replicas = 1",
        "sync_replicas = 1\nsync_replica = 2",
        1,
    );
    let line = unknown
        .lines()
        .position(|l| l.starts_with("sync_replica "))
        .unwrap()
        + 1;
    let (ok, output) = check_config(dir.path(), &unknown);
    assert!(!ok);
    assert!(output.contains("sync_replica"), "{output}");
    assert!(
        output.contains(&format!("line {line}")),
        "line {line}: {output}"
    );

    let bad_port = full.replacen(
        "listen = \"127.0.0.1:7400\"",
        "listen = \"127.0.0.1:74000\"",
        1,
    );
    let line = bad_port
        .lines()
        .position(|l| l.starts_with("listen "))
        .unwrap()
        + 1;
    let (ok, output) = check_config(dir.path(), &bad_port);
    assert!(!ok);
    assert!(
        output.contains("socket address") && output.contains(&format!("line {line}")),
        "{output}"
    );

    let (ok, output) = check_config(
        dir.path(),
        &full.replace("ring_pages = 1024", "ring_pages = 1024\nsync_replicas = 1"),
    );
    assert!(!ok);
    assert!(
        output.contains("`sync_replicas` applies to a source only"),
        "{output}"
    );

    let (ok, output) = check_config(dir.path(), &full.replace("replicated:1", "replicated:2"));
    assert!(!ok);
    assert!(output.contains("waits for 2 replicas"), "{output}");

    let (ok, output) = check_config(
        dir.path(),
        &full.replace("ring_pages = 4096", "ring_pages = 4000"),
    );
    assert!(!ok);
    assert!(output.contains("ring_pages"), "{output}");

    let (ok, output) = check_config(
        dir.path(),
        &full.replace("apply_nice = 10", "apply_nice = 20"),
    );
    assert!(!ok);
    assert!(output.contains("`apply_nice` = 20"), "{output}");

    let (ok, output) = check_config(
        dir.path(),
        &full.replacen("flush_pace_ms = 10 ", "flush_pace_ms = 60001 ", 1),
    );
    assert!(!ok);
    assert!(output.contains("`flush_pace_ms` = 60001"), "{output}");

    let (ok, output) = check_config(
        dir.path(),
        &full.replacen("apply_pace_ms = 20 ", "apply_pace_ms = 60001 ", 1),
    );
    assert!(!ok);
    assert!(output.contains("`apply_pace_ms` = 60001"), "{output}");

    let (ok, output) = check_config(
        dir.path(),
        &full.replace(&secret.display().to_string(), "/nonexistent/secret"),
    );
    assert!(!ok);
    assert!(output.contains("secret file"), "{output}");
}

#[test]
fn a_nodes_applier_runs_at_the_configured_nice_steps_below_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(
        dir.path(),
        "node.toml",
        &format!(
            "name = \"n\"\nlisten = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n\n\
             [[databases]]\nname = \"db\"\nrole = \"source\"\nring_pages = 64\napply_nice = 3\n",
            dir.path().join("data").display()
        ),
    );
    let node = NodeProcess::start(&config);
    node.line_after("database db uuid");
    // The child starts at this process's nice value; its applier lowers itself once running.
    let ours = own_nice();
    let wanted = vec![(ours + 3).min(19)];
    let deadline = Instant::now() + PATIENCE;
    loop {
        let seen = nice_of(Some(node.child.id()), "pagemesh-applie");
        if seen == wanted {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the node's applier threads run at {seen:?}, not {wanted:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_default_level_logs_lifecycle_events_and_json_is_one_object_a_line() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Node::builder("origin", dir.path().join("origin"))
        .listen("127.0.0.1:0".parse().unwrap())
        .open()
        .unwrap();
    let db = origin.open_database("db", Options::new()).unwrap();
    origin.serve(&db, 0);
    let config = config_file(
        dir.path(),
        "r.toml",
        &replica_config(
            "r",
            dir.path(),
            origin.local_addr().unwrap(),
            db.uuid(),
            false,
        ),
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_pagemesh"))
        .args([
            "node",
            "--log-format",
            "json",
            "--config",
            config.to_str().unwrap(),
        ])
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start pagemesh node");
    let stderr = child.stderr.take().unwrap();
    let (sender, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = sender.send(line);
        }
    });
    // The link up with its resume position, the bootstrap's start and end: all at info.
    let mut wanted = vec![
        "subscribing",
        "receiving a full snapshot",
        "snapshot restored; following from it",
    ];
    let mut seen = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    while !wanted.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(line) = lines.recv_timeout(left) else {
            let _ = child.kill();
            panic!("no {wanted:?} events; saw:\n{}", seen.join("\n"));
        };
        let event: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("not one JSON object a line ({e}): {line}"));
        seen.push(line);
        let message = event["fields"]["message"].as_str().unwrap_or_default();
        if let Some(index) = wanted.iter().position(|w| *w == message) {
            wanted.remove(index);
            assert_eq!(event["level"], "INFO", "{event}");
            if message == "subscribing" {
                assert!(
                    event["fields"]["from_lsn"].is_u64(),
                    "the resume position: {event}"
                );
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}
