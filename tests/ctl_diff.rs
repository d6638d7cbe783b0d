//! `pagemesh ctl diff` and `ctl status --watch` against three real `pagemesh node` processes,
//! on both transports.
//!
//! A primary serves a database written before it started (2,500 entries in two tables); two
//! replicas bootstrap from it by snapshot. `ctl diff --json` between the primary and each
//! replica reports them equal in exactly one round trip. The primary is stopped, written to
//! (1,000 more entries, updates and deletes) and restarted on its address; the replicas catch
//! up from its log and are equal again in one round trip. Then one replica is stopped with
//! SIGTERM, one key's value is changed and another key deleted directly in its LMDB file (with
//! heed, bypassing pagemesh entirely), and it is restarted: `ctl diff --json` now exits 1 and
//! reports exactly those two keys, each with both versions (the deleted one as `null` on the
//! replica's side), in at most [`DIFFER_ROUND_TRIPS_MAX`] round trips; the other replica is still
//! equal. A database the node does not serve is refused with exit code 2, and `status --watch
//! --count 2` answers twice.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use heed::types::Bytes;
use pagemesh::core::{Database, Durability, Options};
use serde_json::Value;

/// Round trips a diff of two copies that differ in two keys may take: the root, two levels of
/// sixteen-way splits for a few thousand entries, the leaves' entries, and one to spare.
const DIFFER_ROUND_TRIPS_MAX: u64 = 6;

/// The config of the primary (database `db`, a source) or of a replica (`copy`, following
/// `source`).
fn write_config(
    dir: &Path,
    name: &str,
    transport: &str,
    listen: SocketAddr,
    source: Option<(SocketAddr, uuid::Uuid)>,
) -> PathBuf {
    let database = match source {
        None => "[[databases]]\nname = \"db\"\nrole = \"source\"\n".to_string(),
        Some((addr, uuid)) => format!(
            "[[databases]]\nname = \"copy\"\nrole = \"replica\"\nsources = [\"{addr}\"]\nuuid = \"{uuid}\"\n"
        ),
    };
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "name = \"{name}\"\nlisten = \"{listen}\"\ndata_dir = \"{}\"\ntransport = \"{transport}\"\n\n{database}",
            dir.join(name).display(),
        ),
    )
    .expect("write config");
    path
}

/// Writes `sales` keys `from..to` (and a `people` key for every other one) to the database at
/// `path`, which no node holds now; returns its uuid.
fn write_offline(path: &Path, from: u32, to: u32) -> uuid::Uuid {
    let db = Database::open(path, Options::new()).expect("open the primary's database");
    for chunk in (from..to).collect::<Vec<_>>().chunks(250) {
        let mut batch = db.batch();
        for &i in chunk {
            let value = format!("sale {i} for {}", i * 1000);
            batch
                .put("sales", format!("k-{i:06}").as_bytes(), value.as_bytes())
                .expect("put");
            if i % 2 == 0 {
                batch
                    .put("people", format!("p-{i:06}").as_bytes(), &i.to_le_bytes())
                    .expect("put");
            }
        }
        db.commit(&batch, Durability::Applied).expect("commit");
    }
    db.uuid()
}

/// Runs `pagemesh ctl --node NODE --json ARGS...`; its exit code and JSON answer (the last line
/// holds it; `--watch` prints one a line).
fn ctl(node: SocketAddr, args: &[&str]) -> (i32, Vec<Value>) {
    let output = Command::new(env!("CARGO_BIN_EXE_pagemesh"))
        .args(["ctl", "--node", &node.to_string(), "--json"])
        .args(args)
        .output()
        .expect("run pagemesh ctl");
    let code = output.status.code().expect("ctl exited");
    let lines = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or(Value::Null))
        .collect();
    (code, lines)
}

/// `ctl diff` of `database` between `a` and `b`: exit code and report.
fn diff(a: SocketAddr, b: SocketAddr, database: uuid::Uuid) -> (i32, Value) {
    let (code, mut lines) = ctl(
        a,
        &["diff", &database.to_string(), "--with", &b.to_string()],
    );
    (code, lines.pop().unwrap_or(Value::Null))
}

/// Waits until `a` and `b` hold equal copies; returns the report, checked field by field.
fn wait_equal(a: SocketAddr, b: SocketAddr, database: uuid::Uuid, entries: u64) -> Value {
    let report = eventually(&format!("{a} and {b} equal"), PATIENCE, || {
        let (code, report) = diff(a, b, database);
        (code == 0).then_some(report)
    });
    assert_eq!(report["equal"], true, "{report}");
    assert_eq!(report["database"], database.to_string());
    assert_eq!(report["a"], a.to_string());
    assert_eq!(report["b"], b.to_string());
    assert_eq!(report["entries_a"], entries, "{report}");
    assert_eq!(report["entries_b"], entries, "{report}");
    assert_eq!(report["unsettled"], false);
    assert_eq!(report["truncated"], false);
    assert_eq!(report["differences"], Value::Array(Vec::new()));
    report
}

/// As [`wait_equal`], then once more at rest: one round trip, one range digested.
fn assert_equal_at_rest(a: SocketAddr, b: SocketAddr, database: uuid::Uuid, entries: u64) {
    wait_equal(a, b, database, entries);
    let (code, report) = diff(a, b, database);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["entries_a"], entries, "{report}");
    assert_eq!(report["entries_b"], entries, "{report}");
    assert_eq!(
        report["round_trips"], 1,
        "equal copies: one round trip, {report}"
    );
    assert_eq!(report["ranges_digested"], 1, "{report}");
}

/// The one generation directory of a replica's copy.
fn replica_lmdb(dir: &Path, name: &str) -> PathBuf {
    let copy = dir.join(name).join("copy");
    let generations = generations(&copy);
    assert_eq!(generations.len(), 1, "{generations:?}");
    copy.join(&generations[0]).join("lmdb")
}

/// Behind pagemesh's back, in the stopped replica's LMDB environment: `sales/k-000123` keeps its
/// version but gets another value, and `people/p-000042` is deleted. Returns the version.
fn tamper(lmdb: &Path) -> u64 {
    let mut options = heed::EnvOpenOptions::new();
    options.map_size(1 << 30).max_dbs(4096);
    // SAFETY: the replica's node is stopped, so no other process has the environment open, and
    // this process opens it once, here.
    let env = unsafe { options.open(lmdb) }.expect("open the replica's LMDB environment");
    let wtxn = env.write_txn().expect("begin");
    let mut seq = 0;
    env.create_databases_and_commit(wtxn, |wdo, wtxn| -> heed::Result<_> {
        let sales: heed::Database<Bytes, Bytes> = wdo.create_database(wtxn, Some("sales"))?;
        let people: heed::Database<Bytes, Bytes> = wdo.create_database(wtxn, Some("people"))?;
        let stored = sales.get(wtxn, b"k-000123")?.expect("k-000123 is there");
        // Stored values are `seq (u64 LE) ‖ bytes` (core/src/store.rs).
        let version: [u8; 8] = stored[..8].try_into().expect("a version");
        seq = u64::from_le_bytes(version);
        let mut changed = version.to_vec();
        changed.extend_from_slice(b"tampered");
        sales.put(wtxn, b"k-000123", &changed)?;
        assert!(people.delete(wtxn, b"p-000042")?, "p-000042 was there");
        Ok(heed::CommitOrAbort::<(), ()>::Commit(()))
    })
    .expect("tamper");
    drop(env);
    seq
}

fn ctl_diff_reports_equal_and_tampered_copies(transport: &str) {
    init_tracing();
    let dir = tempfile::tempdir().expect("tempdir");
    let [primary_addr, r1_addr, r2_addr] = free_loopback_addrs::<3>();
    let db_path = dir.path().join("primary").join("db");
    std::fs::create_dir_all(dir.path().join("primary")).expect("mkdir");
    let database = write_offline(&db_path, 0, 2_000);
    // 2,000 sales and 1,000 people.
    let mut entries = 3_000;

    let primary_config = write_config(dir.path(), "primary", transport, primary_addr, None);
    let primary = NodeProcess::start_until(&primary_config, " role ");
    let source = Some((primary_addr, database));
    let r1_config = write_config(dir.path(), "r1", transport, r1_addr, source);
    let r2_config = write_config(dir.path(), "r2", transport, r2_addr, source);
    let r1 = NodeProcess::start_until(&r1_config, " role ");
    let r2 = NodeProcess::start_until(&r2_config, " role ");
    for replica in [r1.addr, r2.addr] {
        assert_equal_at_rest(primary.addr, replica, database, entries);
    }

    // More writes while the primary is down: the replicas catch up from its log.
    primary.stop("primary");
    write_offline(&db_path, 2_000, 3_000);
    let db = Database::open(&db_path, Options::new()).expect("reopen");
    let mut batch = db.batch();
    batch.put("sales", b"k-000010", b"updated").expect("put");
    batch.delete("sales", b"k-000011").expect("delete");
    db.commit(&batch, Durability::Applied).expect("commit");
    drop(db);
    entries += 1_500 - 1;
    let primary = NodeProcess::start_until(&primary_config, " role ");
    for replica in [r1.addr, r2.addr] {
        assert_equal_at_rest(primary.addr, replica, database, entries);
    }

    r2.stop("r2");
    let seq = tamper(&replica_lmdb(dir.path(), "r2"));
    let r2 = NodeProcess::start_until(&r2_config, " role ");
    let (code, report) = diff(primary.addr, r2.addr, database);
    assert_eq!(code, 1, "copies differ: exit 1, {report}");
    assert_eq!(report["equal"], false, "{report}");
    assert_eq!(report["entries_a"], entries);
    assert_eq!(report["entries_b"], entries - 1);
    assert_eq!(report["truncated"], false);
    assert_eq!(report["unsettled"], false);
    let round_trips = report["round_trips"].as_u64().expect("round_trips");
    assert!(
        (2..=DIFFER_ROUND_TRIPS_MAX).contains(&round_trips),
        "{round_trips} round trips: {report}"
    );
    let differences = report["differences"].as_array().expect("differences");
    assert_eq!(differences.len(), 2, "{report}");
    // Key-space order: tables by name length, so `sales` before `people`.
    let changed = &differences[0];
    assert_eq!(changed["table"], "sales");
    assert_eq!(changed["key"], "k-000123");
    assert_eq!(changed["key_hex"], "6b2d303030313233");
    assert_eq!(changed["a"]["seq"], seq);
    assert_eq!(changed["a"]["value"], "sale 123 for 123000");
    assert_eq!(changed["b"]["seq"], seq);
    assert_eq!(changed["b"]["value"], "tampered");
    assert_eq!(changed["b"]["value_hex"], "74616d7065726564");
    let deleted = &differences[1];
    assert_eq!(deleted["table"], "people");
    assert_eq!(deleted["key"], "p-000042");
    assert_eq!(deleted["a"]["value_hex"], "2a000000", "42 as u32 LE");
    assert!(deleted["a"]["seq"].as_u64().is_some(), "{deleted}");
    assert_eq!(deleted["b"], Value::Null, "missing on the replica");
    // The other way round, the versions swap sides.
    let (code, report) = diff(r2.addr, primary.addr, database);
    assert_eq!(code, 1);
    assert_eq!(report["differences"][0]["a"]["value"], "tampered");
    assert_eq!(report["differences"][1]["a"], Value::Null);
    // The untouched replica is still equal; so is the tampered one to nothing else.
    assert_equal_at_rest(primary.addr, r1.addr, database, entries);

    // For people: a table, and the verdict.
    let human = Command::new(env!("CARGO_BIN_EXE_pagemesh"))
        .args(["ctl", "--node", &primary.addr.to_string(), "diff"])
        .args([&database.to_string(), "--with", &r2.addr.to_string()])
        .output()
        .expect("run pagemesh ctl");
    let text = String::from_utf8_lossy(&human.stdout);
    assert_eq!(human.status.code(), Some(1), "{text}");
    assert!(text.contains("differ (2 keys)"), "{text}");
    assert!(
        text.contains("tampered") && text.contains("(missing)"),
        "{text}"
    );

    let unknown = uuid::Uuid::new_v4();
    let (code, refused) = diff(primary.addr, r1.addr, unknown);
    assert_eq!(code, 2, "{refused}");
    assert!(
        refused["error"]
            .as_str()
            .is_some_and(|e| e.contains("does not serve")),
        "{refused}"
    );

    let (code, answers) = ctl(
        r1.addr,
        &["status", "--watch", "--count", "2", "--interval-ms", "100"],
    );
    assert_eq!(code, 0);
    assert_eq!(answers.len(), 2, "{answers:?}");
    for answer in &answers {
        assert_eq!(answer["name"], "r1", "{answer}");
        assert_eq!(answer["databases"][0]["database"], database.to_string());
    }

    r2.stop("r2");
    r1.stop("r1");
    primary.stop("primary");
}

#[test]
fn ctl_diff_reports_equal_and_tampered_copies_on_epoll() {
    ctl_diff_reports_equal_and_tampered_copies("epoll");
}

#[test]
fn ctl_diff_reports_equal_and_tampered_copies_on_io_uring() {
    ctl_diff_reports_equal_and_tampered_copies("uring");
}
