//! `pagemesh backup` and `pagemesh stat` on a live database: real processes, real files.
//!
//! A child `pagemesh import` writes a generated price-paid CSV into a table in batches of
//! [`BATCH_ROWS`] rows, each batch one `Durable` commit, in file order. The test feeds the CSV to
//! the import's stdin, so it decides where the import stands: after the first
//! [`FIRST_ROWS`] rows it waits (bounded) until `pagemesh stat --json` reports them committed; the
//! import is then blocked on its input, holding the database and its log ring's lock (the test
//! checks that the ring refuses it a second writer: the state in which the old `pagemesh backup`,
//! which opened the database as a writer, failed with "the log is locked by another process"). A
//! backup taken then is mid-import by construction, not by timing. Then a thread feeds the rest
//! while the test takes more backups (bounded in count and time) until the import exits, and one
//! more after.
//!
//! Every backup is restored with `pagemesh restore` into a fresh directory and must hold exactly
//! the first `n` rows of the file, each with its exact bytes, where `n` is what `pagemesh stat`
//! reports for the restored copy, a whole number of batches (a batch is one atomic commit), and
//! never fewer than the backup before. The import must exit successfully with every row in (the
//! backups did not disturb it), and the last backup must hold the whole file.
//!
//! `pagemesh stat` on a directory that is not a database fails and names the directory.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::time::{Duration, Instant};

use pagemesh_core::{Database, Options};
use pagemesh_tools::workload::price_paid::PricePaid;

const TABLE: &str = "price_paid";
/// Rows in the generated file.
const ROWS: u64 = 6_000;
/// Rows per commit of the import.
const BATCH_ROWS: u64 = 100;
/// Rows fed before the guaranteed mid-import backup (a whole number of batches).
const FIRST_ROWS: u64 = 2_000;
/// Rows fed per write while backups run.
const FEED_ROWS: usize = 100;
/// Backups taken while the rest is fed, at most.
const LIVE_BACKUPS_MAX: usize = 25;
/// The bound on anything the test waits for.
const PATIENCE: Duration = Duration::from_secs(120);

fn pagemesh(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pagemesh"))
        .args(args)
        .output()
        .expect("run pagemesh")
}

/// Runs pagemesh, asserts it succeeded (showing its stderr if not), returns its stdout.
fn pagemesh_ok(args: &[&str]) -> String {
    let out = pagemesh(args);
    assert!(
        out.status.success(),
        "pagemesh {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// `pagemesh stat DIR --json`, parsed.
fn stat_json(dir: &Path) -> serde_json::Value {
    let out = pagemesh_ok(&["stat", path_str(dir), "--json"]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("stat --json printed {out:?}: {e}"))
}

/// The records `stat --json` reports for the table (0 while it does not exist yet).
fn stat_records(stat: &serde_json::Value) -> u64 {
    let tables = stat["tables"].as_array().expect("tables array");
    tables
        .iter()
        .find(|t| t["name"] == TABLE)
        .map_or(0, |t| t["records"].as_u64().expect("records"))
}

/// The file's rows in order: `(key, line)`, as the import sees them.
fn rows(csv: &Path) -> Vec<([u8; 38], String)> {
    let rows: Vec<_> = PricePaid::new(PricePaid::DEFAULT_SEED, ROWS)
        .records()
        .map(|r| (r.key, r.line))
        .collect();
    let file = std::fs::read_to_string(csv).unwrap();
    let lines: Vec<&str> = file.lines().collect();
    assert_eq!(lines.len(), rows.len(), "generated file");
    for (line, (_, expected)) in lines.iter().zip(&rows) {
        assert_eq!(line, expected, "generated file");
    }
    rows
}

/// The child import, fed through its stdin; killed if the test fails first.
struct Import {
    /// Taken by `finish`.
    child: Option<Child>,
    stdin: Option<ChildStdin>,
}

impl Import {
    fn start(db: &Path) -> Self {
        let batch = BATCH_ROWS.to_string();
        let mut child = Command::new(env!("CARGO_BIN_EXE_pagemesh"))
            .args(["import", "--db", path_str(db), "--csv", "/dev/stdin"])
            .args(["--table", TABLE, "--key-column", "0", "--batch", &batch])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start pagemesh import");
        let stdin = child.stdin.take();
        Self {
            child: Some(child),
            stdin,
        }
    }

    fn feed(&mut self, rows: &[([u8; 38], String)]) {
        let stdin = self.stdin.as_mut().expect("import stdin");
        stdin.write_all(lines(rows).as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    fn exited(&mut self) -> bool {
        let child = self.child.as_mut().expect("import running");
        child.try_wait().expect("poll import").is_some()
    }

    /// Waits (bounded) for the import to exit, and asserts it succeeded.
    fn finish(mut self) {
        let deadline = Instant::now() + PATIENCE;
        while !self.exited() {
            assert!(Instant::now() < deadline, "the import did not finish");
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = self.child.take().unwrap().wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "import failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            said.contains(&format!("{ROWS} imported into table")),
            "{said}"
        );
    }
}

impl Drop for Import {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn lines(rows: &[([u8; 38], String)]) -> String {
    rows.iter().map(|(_, line)| format!("{line}\n")).collect()
}

/// Polls `done` every 50 ms until it holds, failing the test after [`PATIENCE`].
fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Backs `db` up, restores the backup into a fresh directory, and checks the copy holds exactly a
/// prefix of `rows` in whole batches; returns its length.
fn backup_and_check(db: &Path, work: &Path, index: usize, rows: &[([u8; 38], String)]) -> u64 {
    let backup = work.join(format!("backup{index}"));
    let copy = work.join(format!("copy{index}"));
    pagemesh_ok(&["backup", path_str(db), path_str(&backup)]);
    assert!(!backup.with_extension("partial").exists());
    pagemesh_ok(&["restore", path_str(&backup), path_str(&copy)]);
    let n = stat_records(&stat_json(&copy));
    assert!(
        n.is_multiple_of(BATCH_ROWS) && n <= ROWS,
        "backup {index}: {n} rows"
    );
    check_prefix(&copy, n, rows);
    std::fs::remove_dir_all(&copy).unwrap();
    std::fs::remove_file(&backup).unwrap();
    n
}

/// The table in `copy` holds exactly `rows[..n]`, each value the row's exact bytes.
fn check_prefix(copy: &Path, n: u64, rows: &[([u8; 38], String)]) {
    let db = Database::open(copy, Options::new()).unwrap();
    let snapshot = db.read().unwrap();
    let held = snapshot.prefix(TABLE, b"").unwrap().count() as u64;
    assert_eq!(
        held,
        n,
        "{}: stat's count against the entries",
        copy.display()
    );
    for (i, (key, line)) in rows.iter().enumerate() {
        let stored = snapshot.get(TABLE, key).unwrap();
        if (i as u64) < n {
            let stored = stored.unwrap_or_else(|| panic!("{}: row {i} missing", copy.display()));
            assert_eq!(stored.bytes, line.as_bytes(), "{}: row {i}", copy.display());
        } else {
            assert!(
                stored.is_none(),
                "{}: row {i} of {n} present",
                copy.display()
            );
        }
    }
}

/// The database's ring is held by another process: a second writer is refused.
fn assert_ring_locked(db: &Path) {
    match Database::open(db, Options::new()) {
        Err(error) => assert!(error.to_string().contains("log is locked"), "{error}"),
        Ok(_) => panic!("opened {} beside the running import", db.display()),
    }
}

#[test]
fn backups_and_stat_of_a_live_import_hold_prefixes_of_its_file() {
    let work = tempfile::tempdir().unwrap();
    let csv = work.path().join("pp.csv");
    let db = work.path().join("db");
    let count = ROWS.to_string();
    pagemesh_ok(&["generate", "--out", path_str(&csv), "--count", &count]);
    let rows = rows(&csv);

    let mut import = Import::start(&db);
    let first = FIRST_ROWS as usize;
    import.feed(&rows[..first]);
    wait_for("the first rows to be committed", || {
        db.join("lmdb").join("data.mdb").exists() && stat_records(&stat_json(&db)) == FIRST_ROWS
    });
    assert!(!import.exited(), "the import waits for more input");
    assert_ring_locked(&db);
    let mut backed_up = vec![backup_and_check(&db, work.path(), 0, &rows)];
    assert_eq!(backed_up[0], FIRST_ROWS, "mid-import backup");
    assert!(!import.exited(), "the import outlived the backup");

    let rest = rows[first..].to_vec();
    let mut stdin = import.stdin.take().expect("import stdin");
    let feeder = std::thread::spawn(move || -> std::io::Result<()> {
        for chunk in rest.chunks(FEED_ROWS) {
            stdin.write_all(lines(chunk).as_bytes())?;
        }
        stdin.flush()
    });
    let deadline = Instant::now() + PATIENCE;
    while !import.exited() && backed_up.len() <= LIVE_BACKUPS_MAX && Instant::now() < deadline {
        let live = stat_records(&stat_json(&db));
        let before = *backed_up.last().unwrap();
        assert!(
            live.is_multiple_of(BATCH_ROWS) && live >= before,
            "stat reported {live} rows after a backup of {before}"
        );
        let n = backup_and_check(&db, work.path(), backed_up.len(), &rows);
        assert!(n >= live, "backup after stat went back: {n} < {live}");
        backed_up.push(n);
    }
    feeder.join().unwrap().expect("feed the import");
    import.finish();
    let last = backup_and_check(&db, work.path(), backed_up.len(), &rows);
    assert_eq!(last, ROWS, "the whole file after the import");
    backed_up.push(last);
    assert!(backed_up.windows(2).all(|w| w[0] <= w[1]), "{backed_up:?}");
    eprintln!("rows in each backup: {backed_up:?}");
}

#[test]
fn stat_of_a_directory_without_a_database_fails_and_names_it() {
    let work = tempfile::tempdir().unwrap();
    let not_db: PathBuf = work.path().join("not-a-db");
    std::fs::create_dir(&not_db).unwrap();
    std::fs::write(not_db.join("notes.txt"), "hello").unwrap();
    for dir in [not_db.clone(), work.path().join("missing")] {
        let out = pagemesh(&["stat", path_str(&dir), "--json"]);
        assert!(!out.status.success());
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(said.contains("is not a pagemesh database"), "{said}");
        assert!(said.contains(path_str(&dir)), "{said}");
        assert!(out.stdout.is_empty());
    }
    assert_eq!(std::fs::read_dir(&not_db).unwrap().count(), 1, "stat wrote");
}
