//! Replication between separate processes: the test process is the primary (a `Node` serving a
//! database), the replica is a real `pagemesh node --config` process over loopback. The replica
//! process is killed with SIGKILL mid-stream and restarted (it must resume, not re-seed), then
//! stopped cleanly with SIGTERM; its database, opened by the test, must equal the primary's and
//! hold every commit that returned `Ok` under `Replicated(1)`.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pagemesh::core::{Database, Durability, Options, WriteBatch};
use pagemesh::net::TransportKind;
use pagemesh::Node;

/// A `pagemesh node` child; killed on drop if still running.
struct NodeProcess(Child);

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_replica(config: &Path) -> NodeProcess {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pagemesh"))
        .args(["node", "--config", config.to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start pagemesh node");
    // Wait for its database line: it is subscribed from then on.
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    // First `node NAME uuid UUID`, then one line per database.
    let identity = lines
        .next()
        .expect("the node prints its identity")
        .expect("readable stdout");
    assert!(
        identity.contains(" uuid "),
        "unexpected first line: {identity}"
    );
    let line = lines
        .next()
        .expect("the node prints its databases")
        .expect("readable stdout");
    assert!(line.contains("role replica"), "unexpected line: {line}");
    // Keep draining stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    NodeProcess(child)
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn sync_replicas(db: &Database) -> usize {
    db.plumbing()
        .replication()
        .status()
        .iter()
        .filter(|r| r.sync)
        .count()
}

/// Commits `count` batches of a few records each with `Replicated(1)`; returns the (key, seq)
/// of every commit that returned Ok. Commits that time out (the replica is down) are allowed,
/// and not promised.
fn load(db: &Database, from: u32, count: u32, acked: &mut Vec<(Vec<u8>, u64)>) {
    for i in from..from + count {
        let key = format!("k{i:06}").into_bytes();
        let value = vec![(i % 251) as u8; 100 + (i as usize * 37) % 3000];
        let mut batch = WriteBatch::new();
        batch.put("t", &key, &value).unwrap();
        batch.put("counters", b"last", &i.to_le_bytes()).unwrap();
        match db.commit(&batch, Durability::Replicated(1)) {
            Ok(seq) => acked.push((key, seq)),
            Err(pagemesh::core::Error::ReplicationTimeout { .. }) => {}
            Err(error) => panic!("commit {i}: {error}"),
        }
    }
}

fn contents(db: &Database) -> Vec<(String, Vec<u8>, u64, Vec<u8>)> {
    let snapshot = db.read().unwrap();
    let mut tables = db.tables();
    tables.sort();
    let mut out = Vec::new();
    for table in tables {
        for entry in snapshot.prefix(&table, b"").unwrap() {
            let (key, value) = entry.unwrap();
            out.push((table.clone(), key.to_vec(), value.seq, value.bytes.to_vec()));
        }
    }
    out
}

fn replica_process_survives_sigkill_and_converges(transport: TransportKind, name: &str) {
    let dir = tempfile::tempdir().unwrap();
    let primary = Node::builder("primary", dir.path().join("primary"))
        .listen("127.0.0.1:0".parse().unwrap())
        .transport(transport)
        .liveness(Duration::from_millis(100), Duration::from_secs(1))
        .open()
        .unwrap();
    let options = Options::new().replication_timeout(Duration::from_millis(200));
    let db = primary.open_database("db", options).unwrap();
    primary.serve(&db, 1);
    let config = dir.path().join("replica.toml");
    std::fs::write(
        &config,
        format!(
            "name = \"replica\"\ndata_dir = \"{}\"\ntransport = \"{name}\"\n\n[admission]\nlinks_max = 16\nhandshake_timeout_ms = 2000\n\n[[databases]]\nname = \"copy\"\nrole = \"replica\"\nsource = \"{}\"\nuuid = \"{}\"\n",
            dir.path().join("replica").display(),
            primary.local_addr().unwrap(),
            db.uuid()
        ),
    )
    .unwrap();

    let mut acked = Vec::new();
    let replica = start_replica(&config);
    wait_for("the replica to attach", Duration::from_secs(30), || {
        sync_replicas(&db) == 1
    });
    load(&db, 0, 300, &mut acked);

    // SIGKILL mid-stream: commits keep coming (and time out while it is down).
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(30));
        drop(replica);
    });
    // Commit until the primary saw the replica go, then a few more that wait for it in vain.
    let mut next = 300;
    while sync_replicas(&db) == 1 && next < 5_000 {
        load(&db, next, 1, &mut acked);
        next += 1;
    }
    load(&db, next, 5, &mut acked);
    next += 5;
    killer.join().unwrap();

    let replica = start_replica(&config);
    wait_for("the replica to come back", Duration::from_secs(30), || {
        sync_replicas(&db) == 1
    });
    load(&db, next, 300, &mut acked);
    db.plumbing().log().seal();
    let end = db.plumbing().received_lsn();
    wait_for(
        "the replica to receive everything",
        Duration::from_secs(30),
        || {
            db.plumbing()
                .replication()
                .status()
                .first()
                .is_some_and(|r| r.received_lsn >= end)
        },
    );

    // A clean stop, then the replica's files are opened here and compared.
    let pid = replica.0.id();
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut replica = replica;
    let exit = replica.0.wait().unwrap();
    assert!(
        exit.success(),
        "the replica node exits cleanly on SIGTERM: {exit}"
    );

    let generations: Vec<_> = std::fs::read_dir(dir.path().join("replica/copy"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(generations, ["generation-0"], "resumed, never re-seeded");
    let copy =
        Database::open(dir.path().join("replica/copy/generation-0"), Options::new()).unwrap();
    wait_for(
        "the copy to apply what it received",
        Duration::from_secs(30),
        || copy.applied_lsn() >= end,
    );
    assert!(copy.is_replica());
    let snapshot = copy.read().unwrap();
    for (key, seq) in &acked {
        let value = snapshot.get("t", key).unwrap();
        assert_eq!(
            value.map(|v| v.seq),
            Some(*seq),
            "acknowledged commit missing"
        );
    }
    drop(snapshot);
    assert!(
        acked.len() >= 600,
        "only {} commits were acknowledged",
        acked.len()
    );
    wait_for(
        "the primary to apply its log",
        Duration::from_secs(30),
        || db.applied_lsn() >= end,
    );
    assert!(
        contents(&copy) == contents(&db),
        "the replica differs from the primary"
    );
}

#[test]
fn a_replica_process_survives_sigkill_and_converges_on_epoll() {
    replica_process_survives_sigkill_and_converges(TransportKind::Epoll, "epoll");
}

#[test]
fn a_replica_process_survives_sigkill_and_converges_on_io_uring() {
    replica_process_survives_sigkill_and_converges(TransportKind::Auto, "auto");
}
