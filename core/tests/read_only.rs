//! `ReadOnlyDatabase` reads a database that another *process* holds open and writes, and writes
//! nothing itself.
//!
//! This test binary is its own child. The child opens a `Database` (taking the log ring's lock),
//! commits `Applied` batches, says `ready` on stdout, and waits for the parent on stdin. While the
//! child holds the database, the parent checks that it cannot open it itself (`Database::open`
//! fails on the ring lock: the situation `pagemesh backup` used to fail in), opens it read-only,
//! and finds exactly what the child committed: values, versions, the record counts of
//! `Snapshot::stat`, and an export that restores to the same contents. A view opened before the
//! child's second phase created a new table sees that table in its next snapshot. Across the
//! parent's reads, `data.mdb` and the log's files keep their length, mtime and crc32c: only LMDB's
//! lock file is touched.
//!
//! It also checks what the open refuses, with the path in the message: a directory without
//! `lmdb/data.mdb`, an LMDB environment without pagemesh's databases or without a store format in
//! `__meta`, and a second open of an environment this process holds.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use pagemesh_core::{Database, Durability, Error, Options, ReadOnlyDatabase, WriteBatch};

const CHILD_ENV: &str = "PAGEMESH_CORE_READ_ONLY_CHILD";
/// Keys the child puts in `early` in its first phase.
const EARLY_KEYS: u32 = 50;
/// Keys the child puts in `late` (a table created in its second phase).
const LATE_KEYS: u32 = 30;
/// `early` keys the second phase overwrites.
const EARLY_REWRITTEN: u32 = 10;
/// The longest the parent waits for the child to say something.
const CHILD_WAIT_MAX: Duration = Duration::from_secs(60);

/// `(table, key)` → value bytes.
type Contents = BTreeMap<(String, Vec<u8>), Vec<u8>>;

fn main() -> ExitCode {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        child(Path::new(&dir));
        return ExitCode::SUCCESS;
    }
    pagemesh_testkit::run_tests([
        (
            "refuses_what_is_not_a_pagemesh_database",
            refuses_what_is_not_a_pagemesh_database as fn(),
        ),
        (
            "refuses_a_second_open_in_this_process",
            refuses_a_second_open_in_this_process,
        ),
        (
            "reads_what_a_child_process_commits_and_writes_nothing",
            reads_what_a_child_process_commits_and_writes_nothing,
        ),
    ])
}

fn value(table: &str, i: u32, phase: u32) -> Vec<u8> {
    format!("{table}-{i}-phase{phase}-")
        .repeat(1 + (i as usize % 7))
        .into_bytes()
}

fn key(i: u32) -> Vec<u8> {
    format!("k{i:05}").into_bytes()
}

/// The child: phase 1, report, wait; phase 2 (a new table, rewrites), report, wait for EOF.
fn child(dir: &Path) {
    let db = Database::open(dir, Options::new()).expect("child opens");
    for i in 0..EARLY_KEYS {
        let mut batch = WriteBatch::new();
        batch.put("early", &key(i), &value("early", i, 1)).unwrap();
        db.commit(&batch, Durability::Applied)
            .expect("child commits");
    }
    say_and_wait("ready 1");
    let mut batch = WriteBatch::new();
    for i in 0..LATE_KEYS {
        batch.put("late", &key(i), &value("late", i, 2)).unwrap();
    }
    for i in 0..EARLY_REWRITTEN {
        batch.put("early", &key(i), &value("early", i, 2)).unwrap();
    }
    db.commit(&batch, Durability::Applied)
        .expect("child commits");
    say_and_wait("ready 2");
}

/// Prints `line` and blocks until the parent writes a line or closes stdin.
fn say_and_wait(line: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").unwrap();
    out.flush().unwrap();
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer).unwrap();
}

/// What the child has committed after `phase`.
fn expected(phase: u32) -> Contents {
    let mut contents = Contents::new();
    for i in 0..EARLY_KEYS {
        let rewritten = phase >= 2 && i < EARLY_REWRITTEN;
        let v = value("early", i, if rewritten { 2 } else { 1 });
        contents.insert(("early".into(), key(i)), v);
    }
    if phase >= 2 {
        for i in 0..LATE_KEYS {
            contents.insert(("late".into(), key(i)), value("late", i, 2));
        }
    }
    contents
}

fn contents_of(snapshot: &pagemesh_core::Snapshot<'_>, tables: &[&str]) -> Contents {
    let mut contents = Contents::new();
    for table in tables {
        for entry in snapshot.prefix(table, b"").unwrap() {
            let (key, value) = entry.unwrap();
            contents.insert((table.to_string(), key.to_vec()), value.bytes.to_vec());
        }
    }
    contents
}

/// Length, mtime and crc32c of a file: what changes if anything writes it.
#[derive(Debug, PartialEq, Eq)]
struct Fingerprint {
    len: u64,
    modified: SystemTime,
    crc: u32,
}

fn fingerprint(path: &Path) -> Fingerprint {
    let meta = std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Fingerprint {
        len: meta.len(),
        modified: meta.modified().unwrap(),
        crc: crc32c::crc32c(&std::fs::read(path).unwrap()),
    }
}

fn fingerprints(dir: &Path) -> Vec<Fingerprint> {
    let log_files = pagemesh_logpage::Log::files(dir).expect("list the log's files");
    assert!(
        log_files.len() > 1,
        "a head and its segments: {log_files:?}"
    );
    std::iter::once(dir.join("lmdb").join("data.mdb"))
        .chain(log_files)
        .map(|path| fingerprint(&path))
        .collect()
}

/// The child process, killed if the test fails before it exits.
struct Writer {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl Writer {
    fn start(dir: &Path) -> Self {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env(CHILD_ENV, dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start child");
        let stdout = child.stdout.take().unwrap();
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            stdin: child.stdin.take(),
            child,
            lines,
        }
    }

    fn expect_line(&self, wanted: &str) {
        let line = self
            .lines
            .recv_timeout(CHILD_WAIT_MAX)
            .unwrap_or_else(|e| panic!("child did not say {wanted:?}: {e}"));
        assert_eq!(line, wanted);
    }

    fn go_on(&mut self) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(b"go\n").unwrap();
        stdin.flush().unwrap();
    }

    fn finish(mut self) {
        drop(self.stdin.take());
        let status = self.child.wait().unwrap();
        assert!(status.success(), "child failed: {status}");
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if self.stdin.is_some() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn reads_what_a_child_process_commits_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    let mut writer = Writer::start(&dir);
    writer.expect_line("ready 1");

    // The child holds the ring: the old backup path (Database::open) fails here.
    match Database::open(&dir, Options::new()) {
        Err(Error::Log(e)) => assert!(e.to_string().contains("locked"), "{e}"),
        other => panic!("expected the ring lock to refuse a second writer, got {other:?}"),
    }
    let before = fingerprints(&dir);
    let view = ReadOnlyDatabase::open(&dir).expect("read-only open beside a writer");
    check_view(&view, 1, tmp.path());
    assert_eq!(
        fingerprints(&dir),
        before,
        "phase 1: a read-only view wrote"
    );

    // The child creates a table the view has no handle for yet.
    writer.go_on();
    writer.expect_line("ready 2");
    let before = fingerprints(&dir);
    check_view(&view, 2, tmp.path());
    drop(view);
    assert_eq!(
        fingerprints(&dir),
        before,
        "phase 2: a read-only view wrote"
    );
    writer.finish();
}

/// The view's next snapshot holds exactly the child's `phase`, and so does its export restored.
fn check_view(view: &ReadOnlyDatabase, phase: u32, tmp: &Path) {
    let snapshot = view.read().unwrap();
    let want = expected(phase);
    assert_eq!(
        contents_of(&snapshot, &["early", "late"]),
        want,
        "phase {phase}"
    );
    let stat = snapshot.stat().unwrap();
    let counts: Vec<(String, u64)> = stat
        .tables
        .iter()
        .map(|t| (t.name.clone(), t.records))
        .collect();
    let mut want_counts = vec![("early".to_string(), u64::from(EARLY_KEYS))];
    if phase >= 2 {
        want_counts.push(("late".to_string(), u64::from(LATE_KEYS)));
    }
    assert_eq!(counts, want_counts, "phase {phase}");
    assert_eq!(stat.database_uuid, view.uuid());
    assert!(!stat.is_replica);
    let mut stream = Vec::new();
    let exported = snapshot.export(&mut stream).unwrap();
    assert_eq!(exported.entries, want.len() as u64);
    assert_eq!(exported.lsn, stat.binlog_next_lsn);
    drop(snapshot);
    let copy: PathBuf = tmp.join(format!("copy{phase}"));
    let (restored, _) = Database::restore(&copy, &stream[..], Options::new()).unwrap();
    assert_eq!(restored.uuid(), view.uuid());
    assert_eq!(
        contents_of(&restored.read().unwrap(), &["early", "late"]),
        want
    );
}

fn refuses_what_is_not_a_pagemesh_database() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing");
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    for dir in [&missing, &empty] {
        expect_not_a_database(dir, "no lmdb/data.mdb");
    }
    let foreign = tmp.path().join("foreign");
    foreign_env(&foreign, false);
    expect_not_a_database(&foreign, "no __meta");
    let no_format = tmp.path().join("no-format");
    foreign_env(&no_format, true);
    expect_not_a_database(&no_format, "no format in __meta");
}

fn expect_not_a_database(dir: &Path, why: &str) {
    match ReadOnlyDatabase::open(dir) {
        Err(error @ Error::NotADatabase { .. }) => {
            let message = error.to_string();
            assert!(message.contains(why), "{message}");
            assert!(message.contains(&*dir.to_string_lossy()), "{message}");
        }
        other => panic!("{}: expected NotADatabase, got {other:?}", dir.display()),
    }
}

/// An LMDB environment in `dir/lmdb` that is not pagemesh's: one table of its own, or (if
/// `with_meta`) pagemesh's three, with a key but no store format in `__meta`.
#[allow(unsafe_code)]
fn foreign_env(dir: &Path, with_meta: bool) {
    use heed::types::Bytes;
    let path = dir.join("lmdb");
    std::fs::create_dir_all(&path).unwrap();
    // SAFETY: a fresh directory of this test, opened once, closed (dropped) before anyone else
    // opens it; nothing else maps these files meanwhile.
    let env = unsafe { heed::EnvOpenOptions::new().max_dbs(4).open(&path) }.unwrap();
    let names: &[&str] = if with_meta {
        &["__meta", "__binlog", "__binlog_time"]
    } else {
        &["other"]
    };
    let wtxn = env.write_txn().unwrap();
    env.create_databases_and_commit(wtxn, |wdo, wtxn| -> heed::Result<_> {
        for name in names {
            let db: heed::Database<Bytes, Bytes> = wdo.create_database(wtxn, Some(name))?;
            db.put(wtxn, b"something", b"else")?;
        }
        Ok(heed::CommitOrAbort::<_, ()>::Commit(()))
    })
    .unwrap();
    env.prepare_for_closing().wait();
}

fn refuses_a_second_open_in_this_process() {
    let tmp = tempfile::tempdir().unwrap();
    let db = Database::open(tmp.path(), Options::new()).unwrap();
    match ReadOnlyDatabase::open(tmp.path()) {
        Err(error @ Error::AlreadyOpen { .. }) => {
            assert!(error.to_string().contains("already open in this process"))
        }
        other => panic!("expected AlreadyOpen, got {other:?}"),
    }
    // The holder still works, and reads through its own handle.
    let mut batch = WriteBatch::new();
    batch.put("t", b"k", b"v").unwrap();
    db.commit(&batch, Durability::Applied).unwrap();
    assert_eq!(db.read().unwrap().stat().unwrap().tables[0].records, 1);
}
