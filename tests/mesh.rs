//! A mesh of real processes: a 3×3 grid on loopback, pages relayed hop by hop, a relay killed
//! with SIGKILL and routed around, a tenth node joining mid-load; both transports.
//!
//! The origin is the grid's corner `(0, 0)`, a [`Node`] in the test process (it is the writer,
//! and commits need a caller); the eight other nodes are `pagemesh node --config` processes.
//! Each node knows only its grid neighbours nearer the corner, the more central one first, and
//! follows one of them (`sources = [...]` in its config): the middle node feeds `(1, 2)` and
//! `(2, 1)`, which feed `(2, 2)`. Mid-load the middle node is killed with SIGKILL: the two it
//! fed move to their other neighbour at once, and commits keep being acknowledged by nodes the
//! origin has no link to. The middle node restarts on the same address and resumes; then a
//! tenth node, knowing only `(2, 2)`, joins and bootstraps from it. Every `Replicated(8)` commit
//! that returns `Ok` was received by all eight others; at the end every node is stopped with
//! SIGTERM, opened here, and must equal the origin entry for entry and hold exactly what the
//! commits imply. No node is ever re-seeded: each resumed from what it held.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use pagemesh::core::Durability::{Applied, Replicated};
use pagemesh::core::{Database, Options};
use pagemesh::net::TransportKind;

const SEED: u64 = 0x6d65_7368;
/// Grid side.
const SIDE: usize = 3;

/// The config of a grid node that listens on `listen` and follows `sources`.
fn write_config(
    dir: &Path,
    name: &str,
    transport: &str,
    listen: SocketAddr,
    sources: &[SocketAddr],
    database: uuid::Uuid,
) -> PathBuf {
    write_mesh_config(dir, name, transport, listen, sources, &[], database)
}

/// The config of a node that listens on `listen`, gossips with `peers`, and follows `sources`
/// (none: whichever nodes the gossip says hold the database).
fn write_mesh_config(
    dir: &Path,
    name: &str,
    transport: &str,
    listen: SocketAddr,
    sources: &[SocketAddr],
    peers: &[SocketAddr],
    database: uuid::Uuid,
) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    let quoted = |addrs: &[SocketAddr]| {
        addrs
            .iter()
            .map(|a| format!("\"{a}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let sources = if sources.is_empty() {
        String::new()
    } else {
        format!("sources = [{}]\n", quoted(sources))
    };
    std::fs::write(
        &path,
        format!(
            "name = \"{name}\"\nlisten = \"{listen}\"\ndata_dir = \"{}\"\ntransport = \"{transport}\"\n\
             peers = [{}]\n\n\
             [[databases]]\nname = \"copy\"\nrole = \"replica\"\n{sources}uuid = \"{database}\"\n",
            dir.join(name).display(),
            quoted(peers),
        ),
    )
    .expect("write config");
    path
}

/// The neighbours of `(row, col)` one hop nearer the corner, the more central first.
fn upstream_of(row: usize, col: usize) -> Vec<(usize, usize)> {
    let mut near = Vec::new();
    if row > 0 {
        near.push((row - 1, col));
    }
    if col > 0 {
        near.push((row, col - 1));
    }
    near.sort_by_key(|&(r, c)| std::cmp::Reverse(r.min(c)));
    near
}

/// Waits until `nodes` distinct nodes are known to the origin to hold everything it wrote: its
/// direct links, and the nodes their RECEIPTS report.
fn wait_held_by(db: &Database, nodes: u32, what: &str) {
    db.plumbing().log().seal();
    let end = db.plumbing().received_lsn();
    let deadline = std::time::Instant::now() + PATIENCE;
    while !db.plumbing().replication().reached(end, nodes) {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: {nodes} nodes holding pages below {end} not within {PATIENCE:?}; links {:#?}",
            db.plumbing().replication().status()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The origin, a `Node` in the test process, listening on loopback: the tests' short heartbeat,
/// but `pagemesh node`'s default link timeout (5 s). The processes it serves heartbeat at their
/// default 1 s, so the tests' 1 s timeout would drop an idle link to one whenever a heartbeat
/// came late (an empty database's links carry nothing else): that flaked the gossip test, whose
/// writes wait until every node holds the empty database.
fn origin_node(name: &str, dir: &Path, transport: TransportKind) -> pagemesh::Node {
    pagemesh::Node::builder(name, dir.join(name))
        .transport(transport)
        .liveness(HEARTBEAT, Duration::from_secs(5))
        .backoff_max(BACKOFF_MAX)
        .listen(LOOPBACK.expect("loopback"))
        .open()
        .unwrap_or_else(|e| panic!("open node {name} on {transport:?}: {e}"))
}

/// The one generation of the copy in a node's data directory, opened.
fn open_copy(dir: &Path, name: &str) -> Database {
    let copy = dir.join(name).join("copy");
    let generations = generations(&copy);
    assert_eq!(
        generations.len(),
        1,
        "{name} resumed what it held, never re-seeded: {generations:?}"
    );
    // The nodes open their copies with the default options.
    Database::open(copy.join(&generations[0]), Options::new())
        .unwrap_or_else(|e| panic!("open {name}'s copy: {e}"))
}

fn a_grid_of_processes_relays_reroutes_and_converges(transport: TransportKind, name: &str) {
    init_tracing();
    let dir = tempfile::tempdir().expect("tempdir");
    let origin = origin_node("n00", dir.path(), transport);
    let db = origin
        .open_database(
            "db",
            options(1024).replication_timeout(Duration::from_secs(5)),
        )
        .expect("open the origin's database");
    origin.serve(&db, 2);
    let any_port = SocketAddr::from(([127, 0, 0, 1], 0));

    // Start the grid outwards from the corner, each node once its upstreams listen.
    let mut addrs = vec![vec![None; SIDE]; SIDE];
    addrs[0][0] = origin.local_addr();
    let mut processes: Vec<Vec<Option<NodeProcess>>> = (0..SIDE)
        .map(|_| (0..SIDE).map(|_| None).collect())
        .collect();
    let mut configs = vec![vec![PathBuf::new(); SIDE]; SIDE];
    for distance in 1..=2 * (SIDE - 1) {
        for row in 0..SIDE {
            let Some(col) = distance.checked_sub(row).filter(|&c| c < SIDE) else {
                continue;
            };
            let sources: Vec<SocketAddr> = upstream_of(row, col)
                .into_iter()
                .map(|(r, c)| addrs[r][c].expect("upstream started"))
                .collect();
            let label = format!("n{row}{col}");
            let config = write_config(dir.path(), &label, name, any_port, &sources, db.uuid());
            let process = NodeProcess::start(&config);
            // Restarts listen where the node's neighbours look for it.
            configs[row][col] =
                write_config(dir.path(), &label, name, process.addr, &sources, db.uuid());
            addrs[row][col] = Some(process.addr);
            processes[row][col] = Some(process);
        }
    }
    let others = (SIDE * SIDE - 1) as u32;
    wait_held_by(&db, others, "every node counted at the origin");
    let links = db.plumbing().replication().status();
    assert_eq!(
        links.len(),
        2,
        "the corner links to its two neighbours only"
    );

    // Every commit waits for all eight: receipts cross up to four hops back to the origin.
    let ledger = Ledger::default();
    let mut workload = bulk_workload(SEED, 0);
    ledger.run(&db, &mut workload, 40, &[Replicated(8)], &no_check);
    ledger.assert_clean("the whole grid");

    // Kill the middle node mid-load; its two downstreams move to their other neighbour, and
    // commits keep being acknowledged by three nodes.
    let middle = processes[1][1].take().expect("middle node");
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        drop(middle);
    });
    let mut workload = bulk_workload(SEED ^ 1, 1);
    ledger.run(&db, &mut workload, 40, &[Replicated(3), Applied], &no_check);
    killer.join().expect("killer");
    ledger.run(&db, &mut workload, 20, &[Replicated(7)], &no_check);
    ledger.assert_clean("routed around the middle");

    // The middle comes back where it was, and resumes from its neighbours.
    processes[1][1] = Some(NodeProcess::start(&configs[1][1]));
    wait_held_by(&db, others, "the middle resumed");

    // A tenth node, knowing only (2, 2), joins mid-load and bootstraps from it.
    let far = addrs[SIDE - 1][SIDE - 1].expect("far corner");
    let joiner_config = write_config(dir.path(), "joiner", name, any_port, &[far], db.uuid());
    let mut workload = bulk_workload(SEED ^ 2, 2);
    let joiner = std::thread::scope(|scope| {
        let joiner = scope.spawn(|| {
            std::thread::sleep(Duration::from_millis(20));
            NodeProcess::start(&joiner_config)
        });
        ledger.run(&db, &mut workload, 30, &[Replicated(3)], &no_check);
        joiner.join().expect("joiner")
    });
    wait_held_by(&db, others + 1, "the tenth node bootstrapped");
    ledger.run(&db, &mut workload, 20, &[Replicated(9)], &no_check);
    ledger.assert_clean("ten nodes");

    // Everything received everywhere (the last commits waited for all nine others); stop
    // every node cleanly and compare its files with the origin's.
    joiner.stop("joiner");
    let mut names = vec!["joiner".to_string()];
    for (row, line) in processes.iter_mut().enumerate() {
        for (col, process) in line.iter_mut().enumerate() {
            if let Some(process) = process.take() {
                let label = format!("n{row}{col}");
                process.stop(&label);
                names.push(label);
            }
        }
    }
    db.plumbing().log().seal();
    let end = eventually("the origin applies its log", PATIENCE, || {
        let end = db.plumbing().received_lsn();
        (db.applied_lsn() >= end).then_some(end)
    });
    for label in &names {
        let copy = open_copy(dir.path(), label);
        eventually(
            &format!("{label} applies what it received"),
            PATIENCE,
            || (copy.applied_lsn() >= end).then_some(()),
        );
        assert_same(&db, &copy, label);
        assert_model(&copy, &ledger, label);
    }
}

#[test]
fn a_grid_of_processes_relays_reroutes_and_converges_on_epoll() {
    a_grid_of_processes_relays_reroutes_and_converges(TransportKind::Epoll, "epoll");
}

#[test]
fn a_grid_of_processes_relays_reroutes_and_converges_on_io_uring() {
    a_grid_of_processes_relays_reroutes_and_converges(TransportKind::Uring, "uring");
}

/// The start of every chain below: the origin, a `Node` in this process serving `db` with
/// `sync_replicas` synchronous replicas, and node `a`, a `pagemesh node` process that follows
/// it and gossips with it.
fn origin_and_a(
    dir: &Path,
    transport: TransportKind,
    name: &str,
    sync_replicas: usize,
) -> (pagemesh::Node, Database, NodeProcess) {
    let origin = origin_node("origin", dir, transport);
    let db = origin
        .open_database(
            "db",
            options(1024).replication_timeout(Duration::from_secs(5)),
        )
        .expect("open the origin's database");
    origin.serve(&db, sync_replicas);
    let origin_addr = origin.local_addr().expect("the origin listens");
    let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
    let a_config = write_mesh_config(
        dir,
        "a",
        name,
        any_port,
        &[origin_addr],
        &[origin_addr],
        db.uuid(),
    );
    let a = NodeProcess::start(&a_config);
    (origin, db, a)
}

/// Membership by gossip over real processes: a chain `origin – a – b – c` in which each node
/// knows only its neighbour towards the origin as a *peer*, and only `a` names a source. `b` and
/// `c` replicate a database they have never seen, knowing its uuid and one peer: they learn from
/// the gossip which nodes serve it and follow the nearest (`c` follows `b`, the one it hears
/// directly). Then `a` is killed with SIGKILL: `b` moves to the origin, which it only knows by
/// gossip, and `Replicated(3)` commits keep returning. Everything converges, nothing re-seeded.
fn a_node_knowing_one_peer_discovers_its_holders(transport: TransportKind, name: &str) {
    init_tracing();
    let dir = tempfile::tempdir().expect("tempdir");
    // The origin node lives to the end: dropping it stops its network.
    let (_origin, db, a) = origin_and_a(dir.path(), transport, name, 3);
    let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
    let b_config = write_mesh_config(dir.path(), "b", name, any_port, &[], &[a.addr], db.uuid());
    let b = NodeProcess::start(&b_config);
    let c_config = write_mesh_config(dir.path(), "c", name, any_port, &[], &[b.addr], db.uuid());
    let c = NodeProcess::start(&c_config);
    wait_held_by(&db, 3, "b and c discovered a holder by gossip");
    // Each follows the nearest holder it learns of: the origin ends up linked to a only.
    eventually(
        "b and c settle on the relays they hear directly",
        PATIENCE,
        || (db.plumbing().replication().status().len() == 1).then_some(()),
    );
    let ledger = Ledger::default();
    let mut workload = bulk_workload(SEED ^ 7, 0);
    ledger.run(&db, &mut workload, 30, &[Replicated(3)], &no_check);
    ledger.assert_clean("a chain learned by gossip");

    // a dies; b follows the origin, known to it only through a's gossip.
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        drop(a);
    });
    ledger.run(&db, &mut workload, 20, &[Replicated(1), Applied], &no_check);
    killer.join().expect("killer");
    ledger.run(&db, &mut workload, 20, &[Replicated(2)], &no_check);
    ledger.assert_clean("b moved to the origin it learned of");

    c.stop("c");
    b.stop("b");
    db.plumbing().log().seal();
    let end = eventually("the origin applies its log", PATIENCE, || {
        let end = db.plumbing().received_lsn();
        (db.applied_lsn() >= end).then_some(end)
    });
    for label in ["b", "c"] {
        let copy = open_copy(dir.path(), label);
        eventually(
            &format!("{label} applies what it received"),
            PATIENCE,
            || (copy.applied_lsn() >= end).then_some(()),
        );
        assert_same(&db, &copy, label);
        assert_model(&copy, &ledger, label);
    }
}

#[test]
fn a_node_knowing_one_peer_discovers_its_holders_on_epoll() {
    a_node_knowing_one_peer_discovers_its_holders(TransportKind::Epoll, "epoll");
}

#[test]
fn a_node_knowing_one_peer_discovers_its_holders_on_io_uring() {
    a_node_knowing_one_peer_discovers_its_holders(TransportKind::Uring, "uring");
}

/// Runs `pagemesh ctl --node NODE ARGS... --json`; its exit code and JSON answer.
fn ctl(node: SocketAddr, args: &[&str]) -> (i32, serde_json::Value) {
    let output = Command::new(env!("CARGO_BIN_EXE_pagemesh"))
        .args(["ctl", "--node", &node.to_string(), "--json"])
        .args(args)
        .output()
        .expect("run pagemesh ctl");
    let code = output.status.code().expect("ctl exited");
    let json = serde_json::from_slice(&output.stdout).unwrap_or(serde_json::Value::Null);
    (code, json)
}

/// The command channel over real processes: `pagemesh ctl status` on a relay names it, its
/// one database (relayed, from the origin's log, a committed LSN no further than the origin's)
/// and the nodes its gossip knows; `lookup` on a node that only knows one peer finds every
/// holder; `promote` is answered "not supported yet" with exit code 1; a node that cannot be
/// reached gives exit code 2.
fn the_command_channel_answers_over_real_processes(transport: TransportKind, name: &str) {
    init_tracing();
    let dir = tempfile::tempdir().expect("tempdir");
    let (origin, db, a) = origin_and_a(dir.path(), transport, name, 2);
    let origin_addr = origin.local_addr().expect("the origin listens");
    let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
    let b_config = write_mesh_config(dir.path(), "b", name, any_port, &[], &[a.addr], db.uuid());
    let b = NodeProcess::start(&b_config);
    let ledger = Ledger::default();
    wait_held_by(&db, 2, "b discovered a holder");
    let mut workload = bulk_workload(SEED ^ 9, 0);
    ledger.run(&db, &mut workload, 10, &[Replicated(2)], &no_check);
    ledger.assert_clean("a and b hold the origin's pages");

    let status = eventually("a knows the origin and b", PATIENCE, || {
        let (code, status) = ctl(a.addr, &["status"]);
        (code == 0 && status["members"] == 2).then_some(status)
    });
    assert_eq!(status["name"], "a");
    let databases = status["databases"].as_array().expect("databases");
    assert_eq!(databases.len(), 1, "{status}");
    let copy = &databases[0];
    assert_eq!(copy["database"], db.uuid().to_string());
    assert_eq!(copy["origin"], db.origin_uuid().to_string());
    assert_eq!(copy["relay"], true);
    let committed = copy["committed_lsn"].as_u64().expect("committed_lsn");
    assert!(
        committed > 0 && committed <= db.plumbing().received_lsn(),
        "{status}"
    );
    // Its positions, the holder it follows, and its replica b with its lag, once b caught up.
    let status = eventually("a reports b caught up", PATIENCE, || {
        let (code, status) = ctl(a.addr, &["status"]);
        let copy = &status["databases"][0];
        let b = &copy["replicas"][0];
        (code == 0
            && copy["applied_lsn"] == copy["committed_lsn"]
            && b["name"] == "b"
            && b["lag_pages"] == 0)
            .then_some(status)
    });
    let copy = &status["databases"][0];
    let committed = copy["committed_lsn"].as_u64().expect("committed_lsn");
    assert!(copy["durable_lsn"].as_u64().expect("durable_lsn") <= committed);
    assert!(
        copy["ring_slots"].as_u64().expect("ring_slots") > 0,
        "{status}"
    );
    assert!(copy["ring_used"].as_u64().expect("ring_used") <= copy["ring_slots"].as_u64().unwrap());
    assert!(copy["epoch"].is_u64(), "{status}");
    assert_eq!(copy["upstream"], origin_addr.to_string(), "{status}");
    assert_eq!(copy["last_error"], "", "{status}");
    let b_copy = &copy["replicas"][0];
    assert_eq!(b_copy["received_lsn"], committed, "{status}");
    assert_eq!(
        (b_copy["lag_bytes"].as_u64(), b_copy["lag_ms"].as_u64()),
        (Some(0), Some(0))
    );
    assert!(
        ["sync", "async"].contains(&b_copy["state"].as_str().unwrap_or("")),
        "{status}"
    );

    let uuid = db.uuid().to_string();
    let found = eventually("b finds every holder", PATIENCE, || {
        let (code, found) = ctl(b.addr, &["lookup", &uuid]);
        (code == 0 && found["holders"].as_array().is_some_and(|h| h.len() == 3)).then_some(found)
    });
    let holders = found["holders"].as_array().expect("holders");
    // Each with its copy as its own STATUS says: the origin's, and the two relays'.
    for (holder, role) in [
        (origin_addr, "origin"),
        (a.addr, "relay"),
        (b.addr, "relay"),
    ] {
        let entry = holders
            .iter()
            .find(|h| h["addr"] == holder.to_string())
            .unwrap_or_else(|| panic!("{holder} in {found}"));
        assert_eq!(entry["role"], role, "{found}");
        let committed = entry["committed_lsn"].as_u64().expect("committed_lsn");
        assert!(
            committed > 0 && committed <= db.plumbing().received_lsn(),
            "{found}"
        );
        assert!(entry["applied_lsn"].as_u64().expect("applied_lsn") <= committed);
        assert!(entry["epoch"].is_u64(), "{found}");
    }

    // Any node answers for another it knows by gossip: b forwards to a.
    let a_node = status["node"].as_str().expect("a's uuid").to_string();
    let (code, through_b) = ctl(b.addr, &["--to", &a_node, "status"]);
    assert_eq!(code, 0, "{through_b}");
    assert_eq!(through_b["name"], "a", "{through_b}");
    assert_eq!(through_b["node"], a_node.as_str());
    // By name: b's view names every node (gossip carries names), so `--to a` reaches a, and
    // `members` lists the three, b first.
    let members = eventually("b knows every node by name", PATIENCE, || {
        let (code, members) = ctl(b.addr, &["members"]);
        let names: Vec<&str> = (members["members"].as_array().into_iter().flatten())
            .filter_map(|m| m["name"].as_str())
            .collect();
        (code == 0 && names.len() == 3 && ["origin", "a", "b"].iter().all(|n| names.contains(n)))
            .then_some(members)
    });
    let listed = members["members"].as_array().expect("members");
    assert_eq!(listed[0]["name"], "b", "{members}");
    assert_eq!(listed[0]["addr"], b.addr.to_string(), "{members}");
    let origin_entry = listed
        .iter()
        .find(|m| m["name"] == "origin")
        .expect("origin");
    assert_eq!(origin_entry["node"], origin.uuid().to_string(), "{members}");
    assert_eq!(origin_entry["addr"], origin_addr.to_string(), "{members}");
    assert_eq!(origin_entry["databases"][0], uuid.as_str(), "{members}");
    let (code, by_name) = ctl(b.addr, &["--to", "a", "status"]);
    assert_eq!(code, 0, "{by_name}");
    assert_eq!(by_name["node"], a_node.as_str(), "{by_name}");
    let output = Command::new(env!("CARGO_BIN_EXE_pagemesh"))
        .args([
            "ctl",
            "--node",
            &b.addr.to_string(),
            "--to",
            "nobody",
            "status",
        ])
        .output()
        .expect("run pagemesh ctl");
    assert_eq!(output.status.code(), Some(2), "an unknown node name");
    assert!(String::from_utf8_lossy(&output.stderr).contains("no node named \"nobody\""));
    // A database by the name a node knows it by: a keeps its copy as "copy".
    eventually(
        "a finds every holder by the database's name",
        PATIENCE,
        || {
            let (code, found) = ctl(a.addr, &["lookup", "copy"]);
            (code == 0 && found["holders"].as_array().is_some_and(|h| h.len() == 3)).then_some(())
        },
    );
    let (code, _) = ctl(a.addr, &["lookup", "no-such-database"]);
    assert_eq!(code, 1, "an unknown database name is the node's error");
    let stranger = uuid::Uuid::new_v4().to_string();
    let (code, unknown) = ctl(b.addr, &["--to", &stranger, "status"]);
    assert_eq!(code, 1, "{unknown}");
    assert!(
        unknown["error"]
            .as_str()
            .is_some_and(|e| e.contains("not in this node's view")),
        "{unknown}"
    );

    let (code, refused) = ctl(a.addr, &["promote", &uuid]);
    assert_eq!(code, 1, "{refused}");
    assert!(
        refused["error"]
            .as_str()
            .is_some_and(|e| e.contains("not supported yet")),
        "{refused}"
    );
    let (code, _) = ctl(SocketAddr::from(([127, 0, 0, 1], 1)), &["status"]);
    assert_eq!(code, 2, "no node there");
    b.stop("b");
    a.stop("a");
}

/// The config of a node that listens anywhere on loopback, gossips with `peers`, and has no
/// database of its own.
fn write_bare_config(dir: &Path, name: &str, transport: &str, peers: &[SocketAddr]) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    let peers: Vec<String> = peers.iter().map(|a| format!("\"{a}\"")).collect();
    std::fs::write(
        &path,
        format!(
            "name = \"{name}\"\nlisten = \"127.0.0.1:0\"\ndata_dir = \"{}\"\ntransport = \"{transport}\"\n\
             peers = [{}]\n",
            dir.join(name).display(),
            peers.join(", "),
        ),
    )
    .expect("write config");
    path
}

/// REPLICATE and UNREPLICATE over real processes. `pagemesh ctl replicate` makes node c, which
/// had no database, start a copy (the third, beside the origin's and a's); it catches up and
/// counts for `Replicated(2)`. c keeps it across a restart (catching up with what was written
/// while it was down) without being asked again. Commands it cannot carry out are answered with
/// errors and exit code 1: a second copy of the same database, a name that is not one
/// directory, an UNREPLICATE of a copy it does not keep. `unreplicate` stops the copy, which
/// holds every commit, and it stays stopped across the next restart.
fn commands_start_and_stop_copies(transport: TransportKind, name: &str) {
    init_tracing();
    let dir = tempfile::tempdir().expect("tempdir");
    let (_origin, db, a) = origin_and_a(dir.path(), transport, name, 2);
    let c_config = write_bare_config(dir.path(), "c", name, &[a.addr]);
    let c = NodeProcess::start_until(&c_config, " listening on ");
    let ledger = Ledger::default();
    let mut workload = bulk_workload(SEED ^ 15, 0);
    ledger.run(&db, &mut workload, 10, &[Replicated(1)], &no_check);

    let uuid = db.uuid().to_string();
    let (code, done) = ctl(c.addr, &["replicate", &uuid, "--name", "copy"]);
    assert_eq!(code, 0, "{done}");
    assert!(
        done["done"]
            .as_str()
            .is_some_and(|d| d.contains("replicating") && d.contains(&uuid)),
        "{done}"
    );
    wait_held_by(&db, 2, "c's new copy caught up");
    ledger.run(&db, &mut workload, 10, &[Replicated(2)], &no_check);

    c.stop("c");
    ledger.run(&db, &mut workload, 10, &[Replicated(1)], &no_check);
    let c = NodeProcess::start_until(&c_config, " listening on ");
    wait_held_by(&db, 2, "c took its copy up again after a restart");
    let status = eventually("c serves its copy", PATIENCE, || {
        let (code, status) = ctl(c.addr, &["status"]);
        (code == 0 && status["databases"].as_array().is_some_and(|d| d.len() == 1))
            .then_some(status)
    });
    let copy = &status["databases"][0];
    assert_eq!(copy["database"], uuid);
    assert_eq!(copy["origin"], db.origin_uuid().to_string());
    assert_eq!(copy["relay"], true);

    let (code, twice) = ctl(c.addr, &["replicate", &uuid, "--name", "other"]);
    assert_eq!(code, 1, "{twice}");
    assert!(
        twice["error"]
            .as_str()
            .is_some_and(|e| e.contains("already keeps a copy")),
        "{twice}"
    );
    let stranger = uuid::Uuid::new_v4().to_string();
    let (code, bad_name) = ctl(c.addr, &["replicate", &stranger, "--name", "../escape"]);
    assert_eq!(code, 1, "{bad_name}");
    assert!(!dir.path().join("escape").exists());
    let (code, unknown) = ctl(c.addr, &["unreplicate", &stranger]);
    assert_eq!(code, 1, "{unknown}");

    let (code, stopped) = ctl(c.addr, &["unreplicate", &uuid]);
    assert_eq!(code, 0, "{stopped}");
    eventually("c no longer serves the copy", PATIENCE, || {
        let (code, status) = ctl(c.addr, &["status"]);
        (code == 0 && status["databases"].as_array().is_some_and(|d| d.is_empty())).then_some(())
    });
    c.stop("c");
    let copy = open_copy(dir.path(), "c");
    assert_model(&copy, &ledger, "c's copy, stopped by UNREPLICATE");
    drop(copy);

    let c = NodeProcess::start_until(&c_config, " listening on ");
    let (code, status) = ctl(c.addr, &["status"]);
    assert_eq!(code, 0, "{status}");
    assert_eq!(
        status["databases"].as_array().map(Vec::len),
        Some(0),
        "an UNREPLICATE outlives a restart: {status}"
    );
    c.stop("c");
    a.stop("a");
}

#[test]
fn commands_start_and_stop_copies_on_epoll() {
    commands_start_and_stop_copies(TransportKind::Epoll, "epoll");
}

#[test]
fn commands_start_and_stop_copies_on_io_uring() {
    commands_start_and_stop_copies(TransportKind::Uring, "uring");
}

#[test]
fn the_command_channel_answers_over_real_processes_on_epoll() {
    the_command_channel_answers_over_real_processes(TransportKind::Epoll, "epoll");
}

#[test]
fn the_command_channel_answers_over_real_processes_on_io_uring() {
    the_command_channel_answers_over_real_processes(TransportKind::Uring, "uring");
}
