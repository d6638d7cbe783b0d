//! Shared helpers of `tests/replication.rs`, `tests/semisync.rs` and `tests/hostile.rs`: nodes on
//! loopback, a primary with its replicas ([`Pair`], in `pair.rs`), a seeded workload, a ledger of
//! every commit with the model it implies, the "promised" check and the DIFF.
//!
//! Everything that waits is bounded by [`PATIENCE`] (or an explicit bound) and fails the test with
//! what it was waiting for; nothing asserts that something happens fast.
//!
//! Each test binary that includes this module uses only part of it.

#![allow(dead_code)]

mod pair;
mod process;

// Like the rest of this module, each test binary uses only some of these.
#[allow(unused_imports)]
pub use pair::{Follower, Pair, DB};
#[allow(unused_imports)]
pub use process::NodeProcess;

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use pagemesh::core::{Database, Durability, Options, WriteBatch};
use pagemesh::log::PAGE_SIZE;
use pagemesh::net::proto::frame::{decode, Decoded, Frame, FRAME_HEADER_LEN};
use pagemesh::net::TransportKind;
use pagemesh::{Node, Replica};
use pagemesh_tools::proxy::FaultProxy;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The bound on anything that should eventually happen.
pub const PATIENCE: Duration = Duration::from_secs(30);
/// Heartbeat and link timeout of every node in these tests (short, so faults are noticed soon).
pub const HEARTBEAT: Duration = Duration::from_millis(100);
pub const LINK_TIMEOUT: Duration = Duration::from_secs(1);
pub const BACKOFF_MAX: Duration = Duration::from_millis(200);

/// Logs to the test's output when `RUST_LOG` is set.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// Listen on loopback, on a port the system picks (for [`node`]).
pub const LOOPBACK: Option<SocketAddr> = Some(SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::LOCALHOST,
    0,
)));

/// Loopback addresses with ports free right now, for nodes that must know each other's address
/// before either starts (the ports are released on return; another process could take one).
pub fn free_loopback_addrs<const N: usize>() -> [SocketAddr; N] {
    let listeners: Vec<std::net::TcpListener> = (0..N)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port"))
        .collect();
    std::array::from_fn(|i| listeners[i].local_addr().expect("a bound address"))
}

/// A node with the tests' short liveness settings; listening on loopback if `listen`.
pub fn node(
    name: &str,
    dir: &Path,
    transport: TransportKind,
    listen: Option<SocketAddr>,
    secret: Option<&[u8]>,
) -> Node {
    let mut builder = Node::builder(name, dir.join(name))
        .transport(transport)
        .secret(secret.map(<[u8]>::to_vec))
        .liveness(HEARTBEAT, LINK_TIMEOUT)
        .backoff_max(BACKOFF_MAX);
    if let Some(addr) = listen {
        builder = builder.listen(addr);
    }
    builder
        .open()
        .unwrap_or_else(|e| panic!("open node {name} on {transport:?}: {e}"))
}

/// Database options of the tests: `ring_slots` pages of ring, replicated commits wait up to
/// [`PATIENCE`] for their acks (never degraded).
pub fn options(ring_slots: u64) -> Options {
    Options::new()
        .ring_slots(ring_slots)
        .replication_timeout(PATIENCE)
}

/// Polls `condition` every 5 ms until it returns `Some`; panics after `bound` naming `what`.
pub fn eventually<T>(what: &str, bound: Duration, mut condition: impl FnMut() -> Option<T>) -> T {
    eventually_seen(what, bound, || condition().ok_or("(no value)"))
}

/// As [`eventually`], for a condition that says what it saw when it does not hold yet
/// (`Err(seen)`): the panic after `bound` shows the last of it, so a failure in CI says where the
/// wait stood, not only that it ran out.
pub fn eventually_seen<T, S: std::fmt::Debug>(
    what: &str,
    bound: Duration,
    mut condition: impl FnMut() -> Result<T, S>,
) -> T {
    let deadline = Instant::now() + bound;
    loop {
        let seen = match condition() {
            Ok(value) => return value,
            Err(seen) => seen,
        };
        assert!(
            Instant::now() < deadline,
            "{what}: not within {bound:?}; last seen: {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits until `replica` exists (bootstrapped) and its link is up.
pub fn wait_following(replica: &Replica, what: &str) -> Database {
    eventually(
        &format!("{what} bootstrapped and connected"),
        PATIENCE,
        || {
            let status = replica.status();
            replica.database().filter(|_| status.connected)
        },
    )
}

/// Waits until `primary` has `count` attached replicas of which `sync` are synchronous.
pub fn wait_attached(primary: &Database, count: usize, sync: usize) {
    eventually(
        &format!("{count} replicas attached, {sync} synchronous"),
        PATIENCE,
        || {
            let status = primary.plumbing().replication().status();
            let synced = status.iter().filter(|r| r.sync).count();
            (status.len() == count && synced == sync).then_some(())
        },
    );
}

// ---------------------------------------------------------------------------------------------
// Workload

/// One change of a batch.
#[derive(Clone, Debug)]
pub struct Op {
    pub table: &'static str,
    pub key: Vec<u8>,
    /// `None`: a delete.
    pub value: Option<Vec<u8>>,
}

/// A seeded random workload: puts (some of several KB, so records span pages) and deletes over
/// a few tables, batches of 1 to `ops_max` changes. Each writer has its own key space.
pub struct Workload {
    rng: ChaCha8Rng,
    writer: u32,
    pub tables: &'static [&'static str],
    /// Keys per table per writer (small enough that keys are overwritten and deleted).
    pub keys: u32,
    pub ops_max: usize,
    /// Largest value; one value in `big_one_in` is between 2 KB and this.
    pub big_value_max: usize,
    pub big_one_in: u32,
}

impl Workload {
    pub fn new(seed: u64, writer: u32) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed ^ (u64::from(writer) << 32)),
            writer,
            tables: &["accounts", "orders", "blobs"],
            keys: 400,
            ops_max: 50,
            big_value_max: 12_000,
            big_one_in: 10,
        }
    }

    /// The next batch and what it does.
    pub fn batch(&mut self) -> (WriteBatch, Vec<Op>) {
        let count = self.rng.random_range(1..=self.ops_max);
        let mut batch = WriteBatch::new();
        let mut ops = Vec::with_capacity(count);
        for _ in 0..count {
            let table = self.tables[self.rng.random_range(0..self.tables.len())];
            let key = format!(
                "w{}-{:05}",
                self.writer,
                self.rng.random_range(0..self.keys)
            );
            let op = if self.rng.random_ratio(1, 6) {
                batch.delete(table, key.as_bytes()).expect("delete");
                Op {
                    table,
                    key: key.into_bytes(),
                    value: None,
                }
            } else {
                let len = if self.rng.random_ratio(1, self.big_one_in) {
                    self.rng.random_range(2_000..=self.big_value_max)
                } else {
                    self.rng.random_range(0..200)
                };
                let mut value = vec![0; len];
                self.rng.fill(&mut value[..]);
                batch.put(table, key.as_bytes(), &value).expect("put");
                Op {
                    table,
                    key: key.into_bytes(),
                    value: Some(value),
                }
            };
            ops.push(op);
        }
        (batch, ops)
    }

    /// A durability drawn from `choices`.
    pub fn pick(&mut self, choices: &[Durability]) -> Durability {
        choices[self.rng.random_range(0..choices.len())]
    }

    /// How many commits to keep in flight next (1 to 4).
    pub fn inflight(&mut self) -> usize {
        self.rng.random_range(1..=4)
    }
}

// ---------------------------------------------------------------------------------------------
// Ledger and model

/// A commit the primary accepted into its log (so it will be applied, whatever its wait said).
#[derive(Clone, Debug)]
pub struct Committed {
    pub seq: u64,
    pub durability: Durability,
    pub ops: Vec<Op>,
    /// What `wait` returned.
    pub outcome: Result<(), String>,
}

/// Every commit of a test, and every broken promise seen while committing.
#[derive(Default)]
pub struct Ledger {
    commits: Mutex<Vec<Committed>>,
    violations: Mutex<Vec<String>>,
}

/// The receipt check for replicas `replicas`: a `Replicated(n)` commit that returned `Ok` must be
/// held by n of them.
pub fn receipt_check<'a>(
    replicas: &'a [&'a Replica],
) -> impl Fn(u64, Durability) -> Result<(), String> + Sync + 'a {
    move |seq, durability| match durability.replicas() {
        Some(wanted) => {
            let databases: Vec<_> = replicas.iter().map(|r| r.database()).collect();
            received_by(&databases, seq, wanted)
        }
        None => Ok(()),
    }
}

/// Commits `batches` batches of `workload` to `db`, durabilities drawn from `choices`; each
/// `Replicated(n)` commit that returns `Ok` must already be held by n of `replicas`.
pub fn commit_checked(
    ledger: &Ledger,
    db: &Database,
    workload: &mut Workload,
    batches: usize,
    choices: &[Durability],
    replicas: &[&Replica],
) {
    ledger.run(db, workload, batches, choices, &receipt_check(replicas));
}

/// A workload of bigger records, to write megabytes in few commits.
pub fn bulk_workload(seed: u64, writer: u32) -> Workload {
    let mut workload = Workload::new(seed, writer);
    workload.ops_max = 30;
    workload.big_value_max = 6_000;
    workload.big_one_in = 2;
    workload
}

/// Commits `batches` bulk batches `Applied` (nobody needs to be connected).
pub fn write_offline(db: &Database, ledger: &Ledger, seed: u64, batches: usize) {
    ledger.run(
        db,
        &mut bulk_workload(seed, 9),
        batches,
        &[Durability::Applied],
        &no_check,
    );
}

pub fn generations(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("generation-"))
        .collect();
    names.sort();
    names
}

/// Cuts `replica` off its source (the proxy refuses it from now on), waits until it noticed, and
/// returns the LSN it received up to.
pub fn cut_off(proxy: &FaultProxy, replica: &Replica) -> u64 {
    proxy.set_refuse(true);
    proxy.cut();
    eventually("replica disconnected", PATIENCE, || {
        (!replica.status().connected).then_some(())
    });
    replica.database().unwrap().plumbing().received_lsn()
}

/// Decides, right after a commit returned `Ok`, whether what it promised holds; `Err` says what
/// does not.
pub type ReceiptCheck<'a> = dyn Fn(u64, Durability) -> Result<(), String> + Sync + 'a;

impl Ledger {
    pub fn record(&self, committed: Committed) {
        lock(&self.commits).push(committed);
    }

    pub fn violation(&self, what: String) {
        lock(&self.violations).push(what);
    }

    pub fn commits(&self) -> Vec<Committed> {
        lock(&self.commits).clone()
    }

    /// Panics if a commit failed or a promise was broken.
    pub fn assert_clean(&self, what: &str) {
        let violations = lock(&self.violations);
        assert!(
            violations.is_empty(),
            "{what}: {} broken promises, first: {:?}",
            violations.len(),
            &violations[..violations.len().min(5)]
        );
        let commits = lock(&self.commits);
        let failed: Vec<_> = commits
            .iter()
            .filter_map(|c| c.outcome.as_ref().err().map(|e| (c.seq, c.durability, e)))
            .collect();
        assert!(
            failed.is_empty(),
            "{what}: {} of {} commits failed, first: {:?}",
            failed.len(),
            commits.len(),
            &failed[..failed.len().min(5)]
        );
    }

    /// What the database must hold after applying every recorded commit.
    pub fn model(&self) -> Model {
        model_of(&self.commits())
    }

    /// Commits `batches` batches of `workload` to `db`, each with a durability drawn from
    /// `choices`, keeping 1 to 4 in flight; after each `Ok`, runs `check`.
    pub fn run(
        &self,
        db: &Database,
        workload: &mut Workload,
        batches: usize,
        choices: &[Durability],
        check: &ReceiptCheck<'_>,
    ) {
        let mut done = 0;
        while done < batches {
            let window = workload.inflight().min(batches - done);
            let mut tickets = Vec::with_capacity(window);
            for _ in 0..window {
                let (batch, ops) = workload.batch();
                let durability = workload.pick(choices);
                let ticket = db
                    .commit_async(&batch, durability)
                    .unwrap_or_else(|e| panic!("append to the primary's log: {e}"));
                tickets.push((ticket, durability, ops));
            }
            for (ticket, durability, ops) in tickets {
                let seq = ticket.seq();
                let outcome = ticket.wait().map(|_| ()).map_err(|e| e.to_string());
                if outcome.is_ok() {
                    if let Err(broken) = check(seq, durability) {
                        self.violation(format!(
                            "commit seq {seq} ({durability:?}) returned Ok but {broken}"
                        ));
                    }
                }
                self.record(Committed {
                    seq,
                    durability,
                    ops,
                    outcome,
                });
            }
            done += window;
        }
    }
}

/// A (table, key).
pub type Id = (String, Vec<u8>);
/// By (table, key), the last change's seq and value (`None`: deleted).
pub type Model = BTreeMap<Id, (u64, Option<Vec<u8>>)>;

/// What applying `commits` (in seq order) leaves.
pub fn model_of(commits: &[Committed]) -> Model {
    let mut sorted: Vec<&Committed> = commits.iter().collect();
    sorted.sort_by_key(|c| c.seq);
    let mut model = Model::new();
    for commit in sorted {
        for op in &commit.ops {
            model.insert(
                (op.table.to_string(), op.key.clone()),
                (commit.seq, op.value.clone()),
            );
        }
    }
    model
}

/// A check that promises nothing beyond what the ledger checks at the end.
pub fn no_check(_: u64, _: Durability) -> Result<(), String> {
    Ok(())
}

/// `Replicated(n)` promises that `n` replicas *received* the record's pages: of the replicas
/// `databases` returns (their current databases), count those whose received LSN is past the
/// record's first page. `None` entries (a replica restoring) make the check inconclusive.
pub fn received_by(databases: &[Option<Database>], seq: u64, wanted: u32) -> Result<(), String> {
    if databases.iter().any(Option::is_none) {
        return Ok(());
    }
    let page = seq / PAGE_SIZE as u64;
    let received: Vec<u64> = databases
        .iter()
        .flatten()
        .map(|db| db.plumbing().received_lsn())
        .collect();
    let holding = received.iter().filter(|&&lsn| lsn > page).count() as u32;
    if holding < wanted {
        return Err(format!(
            "only {holding} of the replicas hold its page {page} (their received LSNs: {received:?}); {wanted} promised"
        ));
    }
    Ok(())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

// ---------------------------------------------------------------------------------------------
// Contents, DIFF, convergence

/// Every entry of every table: (table, key) → (seq, bytes).
pub fn contents(db: &Database) -> Contents {
    let snapshot = db.read().expect("read snapshot");
    let mut out = BTreeMap::new();
    for table in db.tables() {
        for entry in snapshot.prefix(&table, b"").expect("iterate") {
            let (key, value) = entry.expect("entry");
            out.insert(
                (table.clone(), key.to_vec()),
                (value.seq, value.bytes.to_vec()),
            );
        }
    }
    out
}

fn show_key(table: &str, key: &[u8]) -> String {
    format!("{table}/{}", String::from_utf8_lossy(key))
}

pub type Contents = BTreeMap<Id, (u64, Vec<u8>)>;

/// Differences between two contents, at most `max`, described.
fn differences(a: &Contents, b: &Contents, max: usize) -> (usize, Vec<String>) {
    let mut count = 0;
    let mut shown = Vec::new();
    let mut note = |line: String| {
        count += 1;
        if shown.len() < max {
            shown.push(line);
        }
    };
    for ((table, key), (seq, bytes)) in a {
        match b.get(&(table.clone(), key.clone())) {
            None => note(format!(
                "{} (seq {seq}) only on the primary",
                show_key(table, key)
            )),
            Some((other_seq, other_bytes)) if other_seq != seq || other_bytes != bytes => {
                note(format!(
                    "{}: seq {seq} / {} bytes on the primary, seq {other_seq} / {} bytes on the replica",
                    show_key(table, key),
                    bytes.len(),
                    other_bytes.len()
                ))
            }
            Some(_) => {}
        }
    }
    for ((table, key), (seq, _)) in b {
        if !a.contains_key(&(table.clone(), key.clone())) {
            note(format!(
                "{} (seq {seq}) only on the replica",
                show_key(table, key)
            ));
        }
    }
    (count, shown)
}

/// DIFF: every table, every entry (key, seq, bytes) of `replica` equals `primary`'s.
pub fn assert_same(primary: &Database, replica: &Database, what: &str) {
    let (a, b) = (contents(primary), contents(replica));
    let (count, shown) = differences(&a, &b, 8);
    assert!(
        count == 0,
        "{what}: replica differs from the primary in {count} entries ({} vs {}); primary applied {} / received {}, replica applied {} / received {}; {shown:#?}",
        a.len(),
        b.len(),
        primary.applied_lsn(),
        primary.plumbing().received_lsn(),
        replica.applied_lsn(),
        replica.plumbing().received_lsn(),
    );
}

/// The database holds exactly what the ledger's commits imply, once it has applied everything it
/// received (a `Durable` or `Replicated` commit may return before its records are applied).
pub fn assert_model(db: &Database, ledger: &Ledger, what: &str) {
    // A replica is waited for by `converge`; a primary is settled here.
    if !db.is_replica() {
        db.plumbing().log().seal();
        eventually(
            &format!("{what}: applies what it committed"),
            PATIENCE,
            || (db.applied_lsn() >= db.plumbing().received_lsn()).then_some(()),
        );
    }
    let expected: Contents = ledger
        .model()
        .into_iter()
        .filter_map(|(id, (seq, value))| value.map(|v| (id, (seq, v))))
        .collect();
    let (count, shown) = differences(&expected, &contents(db), 8);
    assert!(
        count == 0,
        "{what}: {count} entries differ from what the commits imply (\"primary\" below is the model); {shown:#?}"
    );
}

/// Seals the primary's open page, waits until it applied everything, then until `replica` did;
/// returns the replica's current database.
pub fn converge(primary: &Database, replica: &Replica, what: &str) -> Database {
    primary.plumbing().log().seal();
    let end = eventually(
        &format!("{what}: primary applies its log"),
        PATIENCE,
        || {
            let end = primary.plumbing().received_lsn();
            (primary.applied_lsn() >= end).then_some(end)
        },
    );
    replica.wait_applied(end, PATIENCE).unwrap_or_else(|e| {
        panic!(
            "{what}: replica did not converge: {e}; status {:?}; primary status {:?}",
            replica.status(),
            primary.plumbing().replication().status()
        )
    })
}

/// Converges `replica`, then checks it against the primary (DIFF) and the ledger.
pub fn assert_converged(primary: &Database, replica: &Replica, ledger: &Ledger, what: &str) {
    let copy = converge(primary, replica, what);
    assert_same(primary, &copy, what);
    assert_model(&copy, ledger, what);
}

// ---------------------------------------------------------------------------------------------
// Raw peers

/// A plain TCP connection with read and write timeouts of `bound`.
pub fn raw_connect(addr: SocketAddr, bound: Duration) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(bound)).expect("read timeout");
    stream
        .set_write_timeout(Some(bound))
        .expect("write timeout");
    stream
}

/// Reads the next whole frame into `buf` (which keeps leftovers); returns its bytes, or `None`
/// at end of stream. Errors on a timeout, a reset or an undecodable frame.
pub fn read_frame(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<Option<Vec<u8>>> {
    loop {
        match decode(buf) {
            Ok(Decoded::Frame { len, .. }) => {
                let frame = buf[..len].to_vec();
                buf.drain(..len);
                return Ok(Some(frame));
            }
            Ok(Decoded::Incomplete { .. }) => {}
            Err(e) => return Err(io::Error::other(format!("undecodable frame: {e}"))),
        }
        let mut chunk = [0; 4096];
        match stream.read(&mut chunk)? {
            0 if buf.is_empty() => return Ok(None),
            0 => return Err(io::Error::other("end of stream inside a frame")),
            n => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Decodes one whole frame read by [`read_frame`].
pub fn frame_of(bytes: &[u8]) -> Frame<'_> {
    match decode(bytes) {
        Ok(Decoded::Frame { frame, .. }) => frame,
        other => panic!("not a whole frame: {other:?}"),
    }
}

/// How a connection a node should close ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// End of stream or a reset: the node closed it.
    Closed,
    /// Nothing within the stream's read timeout.
    StillOpen,
}

/// Reads (and drops) until the node closes the connection or the read timeout passes.
pub fn wait_closed(stream: &mut TcpStream) -> Ended {
    let mut buf = [0; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ended::Closed,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Ended::StillOpen
            }
            Err(_) => return Ended::Closed,
        }
    }
}

/// Writes `bytes`, ignoring failures (the node may have closed already).
pub fn send(stream: &mut TcpStream, bytes: &[u8]) {
    let _ = stream.write_all(bytes);
}

/// The 12-byte frame header for `body_len` bytes of `frame_type` (crc not filled in).
pub fn raw_header(body_len: u32, frame_type: u8) -> [u8; FRAME_HEADER_LEN] {
    let mut header = [0; FRAME_HEADER_LEN];
    header[..4].copy_from_slice(&body_len.to_le_bytes());
    header[4] = frame_type;
    header
}

/// For each scenario `fn NAME(TransportKind)`, a module `NAME` with the tests `epoll` and `uring`
/// (`cargo test NAME::epoll`): every scenario runs on both transports, without a near-copy of
/// each test per transport.
#[macro_export]
macro_rules! on_both_transports {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[test]
            fn epoll() {
                super::$scenario(pagemesh::net::TransportKind::Epoll);
            }

            #[test]
            fn uring() {
                super::$scenario(pagemesh::net::TransportKind::Uring);
            }
        }
    )*};
}
