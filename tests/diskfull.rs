//! A full disk, for real: `pagemesh import` runs on a 32 MiB tmpfs mounted in a private mount
//! namespace (`unshare --user --map-root-user --mount`, so no root is needed), and the disk fills
//! up part-way through.
//!
//! What must hold: the import fails with a clear error and the number of rows it had imported
//! durably, it is not killed by a signal (a sparse, memory-mapped ring would take SIGBUS there);
//! once space is freed the database opens, recovers (`Durable` rows are durable in its log ring,
//! and the open applies those the full disk kept out of LMDB), and holds exactly a prefix of the
//! file's rows, at least as many as were reported durable; and a database that cannot even allocate its
//! log on the full disk is refused at open with an error naming its file.
//!
//! The tmpfs is sized for a part of the rows: a new database's log installs one 4 MiB segment at
//! open and the next ones as it grows, keeping them as history (`pagemesh_logpage`'s segment
//! module, `pagemesh_core`'s binlog module). How much LMDB's file takes depends on how many write
//! transactions the applier made (random keys: each copies most of the tree), which depends on
//! timing; so the rows are far more than fit whatever the timing. At 40,000 rows a whole import
//! took 30 MiB on a plain directory, only 2 MiB over the 28 MiB the import gets, and in one run
//! in a loaded suite it fitted (stop 37); at 80,000 it takes 51 MiB, its log alone 20 MiB.
//!
//! The tmpfs lives only as long as the namespace's shell, so that shell runs every step that needs
//! it and leaves its results (exit codes, stderr, a backup) in the test's own directory.

use std::path::Path;
use std::process::Command;

use pagemesh_core::{Database, Options};
use pagemesh_tools::workload::price_paid::PricePaid;

const ROWS: u64 = 80_000;
const BATCH: u64 = 500;

/// Runs in the namespace. `$1` mount point, `$2` pagemesh, `$3` csv, `$4` results directory,
/// `$5` rows per batch.
const SCRIPT: &str = r#"
set -u
mount -t tmpfs -o size=32m tmpfs "$1" || exit 90
# 4 MiB kept back, freed after the import fails, so that the database can be reopened.
head -c 4194304 /dev/zero > "$1/reserve"
"$2" import --db "$1/db" --csv "$3" --table pp --key-column 0 --batch "$5" 2> "$4/import.err"
echo $? > "$4/import.rc"
rm "$1/reserve"
# Reopen the database read-write (an import of one row into another table): the open recovers
# what only its ring held (Durable commits the full disk kept out of LMDB), which a backup,
# reading LMDB only, would not see.
head -n 2 "$3" > "$4/one.csv"
"$2" import --db "$1/db" --csv "$4/one.csv" --table reopened --key-column 0 --batch 1 2> "$4/reopen.err"
echo $? > "$4/reopen.rc"
"$2" backup "$1/db" "$4/after.snap" 2> "$4/backup.err"
echo $? > "$4/backup.rc"
# Now fill the disk completely and ask for a fresh database: its ring cannot be allocated.
head -c 67108864 /dev/zero > "$1/filler" 2> /dev/null
"$2" import --db "$1/fresh" --csv "$3" --table pp --key-column 0 --batch "$5" 2> "$4/fresh.err"
echo $? > "$4/fresh.rc"
exit 0
"#;

fn read(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("read {name}: {e}"))
}

fn exit_code(dir: &Path, name: &str) -> i32 {
    read(dir, name)
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn a_full_disk_is_a_clear_error_and_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let results = dir.path();
    let csv = results.join("pp.csv");
    let mount = results.join("mnt");
    std::fs::create_dir(&mount).unwrap();
    let bin = env!("CARGO_BIN_EXE_pagemesh");
    let generated = Command::new(bin)
        .args(["generate", "--count", &ROWS.to_string(), "--out"])
        .arg(&csv)
        .output()
        .unwrap();
    assert!(generated.status.success(), "{generated:?}");

    let run = Command::new("unshare")
        .args([
            "--user",
            "--map-root-user",
            "--mount",
            "sh",
            "-c",
            SCRIPT,
            "sh",
        ])
        .arg(&mount)
        .arg(bin)
        .arg(&csv)
        .arg(results)
        .arg(BATCH.to_string())
        .output()
        .expect("run unshare (util-linux)");
    assert!(
        run.status.success(),
        "the namespace script failed ({:?}; 90: no tmpfs mount: this test needs user \
         namespaces, or root): {}",
        run.status,
        String::from_utf8_lossy(&run.stderr)
    );

    // The import failed cleanly: an exit code (a signal would show as 128 + n), a clear error.
    let import_err = read(results, "import.err");
    assert_eq!(exit_code(results, "import.rc"), 1, "{import_err}");
    assert!(import_err.contains("the disk is full"), "{import_err}");
    // "…; N rows are imported durably: …"
    let durable: u64 = import_err
        .split(" rows are imported durably")
        .next()
        .and_then(|before| before.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no durable row count in: {import_err}"));

    // With space again, the database opens (recovering what its ring held) and backs up.
    assert_eq!(
        exit_code(results, "reopen.rc"),
        0,
        "{}",
        read(results, "reopen.err")
    );
    assert_eq!(
        exit_code(results, "backup.rc"),
        0,
        "{}",
        read(results, "backup.err")
    );
    let copy = results.join("copy");
    let snap = std::fs::File::open(results.join("after.snap")).unwrap();
    let (db, _) = Database::restore(&copy, std::io::BufReader::new(snap), Options::new()).unwrap();
    let snapshot = db.read().unwrap();
    let rows: Vec<_> = PricePaid::new(PricePaid::DEFAULT_SEED, ROWS)
        .records()
        .collect();
    let present = rows
        .iter()
        .take_while(|row| snapshot.get("pp", &row.key).unwrap().is_some())
        .count() as u64;
    for row in &rows[..present as usize] {
        let stored = snapshot.get("pp", &row.key).unwrap().unwrap();
        assert_eq!(stored.bytes, row.line.as_bytes(), "row {:?}", row.key);
    }
    for row in &rows[present as usize..] {
        assert!(
            snapshot.get("pp", &row.key).unwrap().is_none(),
            "row {:?} is present after the first missing one: not a prefix",
            row.key
        );
    }
    assert!(
        present >= durable,
        "{durable} rows were reported durable, {present} are there"
    );
    assert!(
        present < ROWS,
        "the disk never filled: all {ROWS} rows are there"
    );
    assert!(
        durable.is_multiple_of(BATCH),
        "{durable} rows reported durable: not whole batches of {BATCH}"
    );

    // A database created on the full disk is refused at open, naming a file of its log.
    let fresh_err = read(results, "fresh.err");
    assert_eq!(exit_code(results, "fresh.rc"), 1, "{fresh_err}");
    assert!(
        (fresh_err.contains("log.head") || fresh_err.contains(".seg"))
            && fresh_err.contains("No space left on device"),
        "{fresh_err}"
    );
}
