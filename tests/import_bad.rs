//! `pagemesh import` accounts for every line of its input, as a careless user's files put it to
//! the test (issue 12). Real processes, real files:
//!
//! - a file with one of every kind of bad line (a ~10 MB field, a duplicate key, a quote left
//!   open before a good row, a BOM before a quoted first field, wrong field counts), plus rows of
//!   3 MB that only fit the log when batches are cut by size: each line is named in the report by
//!   its line or range, the summary's counts add up and equal the table's, and every good row is
//!   stored with its exact bytes; the same rows without the bad lines import cleanly;
//! - `--on-duplicate reject` keeps the first row and fails, `last-wins` keeps the last and passes;
//! - an import SIGKILLed mid-way is refused without `--resume`, refused with `--resume` against a
//!   different file, and with `--resume` on the same file completes with every row exactly once.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use pagemesh_core::{Database, Options};
use pagemesh_tools::workload::price_paid::PricePaid;

fn pagemesh(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pagemesh"))
        .args(args)
        .output()
        .expect("run pagemesh")
}

/// `pagemesh import --db DB --csv CSV --table t --key-column 0` and `extra`.
fn import(db: &Path, csv: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "import",
        "--db",
        db.to_str().unwrap(),
        "--csv",
        csv.to_str().unwrap(),
        "--table",
        "t",
        "--key-column",
        "0",
    ];
    args.extend_from_slice(extra);
    pagemesh(&args)
}

/// The closing summary's counts, by label: `rows read`, `imported`, `keys written`,
/// `replacing`, `duplicates rejected`, `bad`, `too large`.
fn summary_count(stdout: &str, label: &str) -> u64 {
    let at = stdout
        .find(&format!(" {label}"))
        .unwrap_or_else(|| panic!("no {label:?} in summary {stdout:?}"));
    let number = stdout[..at].rsplit([' ', '(']).next().unwrap();
    number
        .parse()
        .unwrap_or_else(|_| panic!("{label:?} in {stdout:?}"))
}

/// Every `(key, value)` of table `t`.
fn table(db: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let db = Database::open(db, Options::new()).unwrap();
    let snapshot = db.read().unwrap();
    snapshot
        .prefix("t", b"")
        .unwrap()
        .map(|entry| {
            let (key, value) = entry.unwrap();
            (key.to_vec(), value.bytes.to_vec())
        })
        .collect()
}

/// Checks the summary's identities and that the table holds exactly `keys_written` keys.
fn assert_counts_add_up(stdout: &str, table_len: usize) {
    let count = |label| summary_count(stdout, label);
    assert_eq!(
        count("rows read"),
        count("imported") + count("duplicates rejected") + count("bad") + count("too large"),
        "{stdout}"
    );
    assert_eq!(
        count("imported"),
        count("keys written") + count("replacing"),
        "{stdout}"
    );
    assert_eq!(count("keys written"), table_len as u64, "{stdout}");
}

#[test]
fn every_line_of_a_bad_file_is_accounted_for() {
    let dir = tempfile::tempdir().unwrap();
    let big = "x".repeat(3 << 20);
    let huge = "y".repeat(10 << 20);
    let good_rows: Vec<String> = vec![
        "\"k01\",a,b".into(),                // 1 (after the BOM)
        "k02,a,\"two\nlines\"".into(),       // 2-3
        format!("k04,{big},1"),              // 4
        format!("k05,{big},2"),              // 5
        format!("k06,{big},3"),              // 6
        format!("k07,{big},4"),              // 7
        "k13,after the open quote,b".into(), // 13
        "k14,a,b".into(),                    // 14
    ];
    let mut file = b"\xef\xbb\xbf".to_vec();
    for line in [
        &good_rows[0],
        &good_rows[1],
        &good_rows[2],
        &good_rows[3],
        &good_rows[4],
        &good_rows[5],
        &format!("k08,{huge},b"),    // 8: too large for one log record
        &"k02,dup,b".to_string(),    // 9: duplicate of line 2
        &"k10,a".to_string(),        // 10: two fields
        &"k11,a,b,c".to_string(),    // 11: four fields
        &"k12,\"open,b".to_string(), // 12: quote open at the line end
        &good_rows[6],
        &good_rows[7],
    ] {
        file.extend_from_slice(line.as_bytes());
        file.push(b'\n');
    }
    let csv = dir.path().join("bad.csv");
    std::fs::write(&csv, &file).unwrap();
    let db = dir.path().join("db");
    let out = import(&db, &csv, &["--batch", "1000"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "rejected rows fail the command");
    for report in [
        "bad.csv: line 8: the row takes 10485",
        "bad.csv: line 9: duplicate key \"k02\", first written by line 2: not imported",
        "bad.csv: line 10: expected 3 fields, found 2",
        "bad.csv: line 11: expected 3 fields, found 4",
        "bad.csv: line 12: malformed CSV: quoted field 1 is still open at the end of the line; \
         read on, lines 12-14 would be one bad record",
        "bad.csv: 5 rows were not imported",
        "8 rows are imported durably",
    ] {
        assert!(stderr.contains(report), "{report:?} not in: {stderr}");
    }
    assert_eq!(
        stderr.lines().count(),
        6,
        "one line per rejected row: {stderr}"
    );
    for (label, count) in [
        ("rows read", 13),
        ("imported", 8),
        ("keys written", 8),
        ("duplicates rejected", 1),
        ("bad", 3),
        ("too large", 1),
    ] {
        assert_eq!(summary_count(&stdout, label), count, "{label}: {stdout}");
    }
    let stored = table(&db);
    assert_counts_add_up(&stdout, stored.len());
    let mut want: Vec<(Vec<u8>, Vec<u8>)> = good_rows
        .iter()
        .map(|row| {
            let key = row.split(',').next().unwrap().trim_matches('"');
            (key.as_bytes().to_vec(), row.as_bytes().to_vec())
        })
        .collect();
    want.sort();
    assert!(
        stored == want,
        "the table is not the good rows, byte for byte"
    );

    // The control: the good rows alone import cleanly, with the same bytes.
    let clean = dir.path().join("clean.csv");
    std::fs::write(&clean, good_rows.join("\n")).unwrap();
    let clean_db = dir.path().join("clean_db");
    let out = import(&clean_db, &clean, &["--batch", "1000"]);
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(summary_count(&stdout, "rows read"), 8, "{stdout}");
    assert_counts_add_up(&stdout, 8);
    assert!(table(&clean_db) == want);
}

#[test]
fn duplicates_are_rejected_by_default_and_replace_with_last_wins() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("dup.csv");
    std::fs::write(&csv, "k1,first\nk2,only\nk1,second\nk1,third\n").unwrap();
    let kv = |k: &str, v: &str| (k.as_bytes().to_vec(), v.as_bytes().to_vec());

    let db = dir.path().join("reject");
    let out = import(&db, &csv, &[]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(!out.status.success());
    assert!(stderr.contains("line 3: duplicate key \"k1\", first written by line 1"));
    assert!(stderr.contains("line 4: duplicate key \"k1\", first written by line 1"));
    assert_eq!(summary_count(&stdout, "duplicates rejected"), 2, "{stdout}");
    assert_eq!(table(&db), [kv("k1", "k1,first"), kv("k2", "k2,only")]);
    assert_counts_add_up(&stdout, 2);

    let db = dir.path().join("last_wins");
    let out = import(&db, &csv, &["--on-duplicate", "last-wins"]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("line 3: duplicate key \"k1\": replaces the row of line 1"));
    assert!(stderr.contains("line 4: duplicate key \"k1\": replaces the row of line 3"));
    assert_eq!(summary_count(&stdout, "replacing"), 2, "{stdout}");
    assert_eq!(summary_count(&stdout, "imported"), 4, "{stdout}");
    assert_eq!(table(&db), [kv("k1", "k1,third"), kv("k2", "k2,only")]);
    assert_counts_add_up(&stdout, 2);
}

/// Starts an import of `csv` with small batches and SIGKILLs it once it has logged `commits`
/// durable batches; returns how many rows it had reported durable.
fn import_and_kill(db: &Path, csv: &Path, commits: usize) -> u64 {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pagemesh"))
        .args(["import", "--db", db.to_str().unwrap(), "--csv"])
        .args([csv.to_str().unwrap(), "--table", "t", "--key-column", "0"])
        .args(["--batch", "50"])
        .env("RUST_LOG", "pagemesh::import=debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run pagemesh");
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let started = Instant::now();
    let mut durable = 0;
    for line in stderr.lines().map_while(Result::ok) {
        if !line.contains("import batch committed") {
            continue;
        }
        assert!(!line.contains("finished=true"), "finished before the kill");
        durable += 50;
        if durable >= 50 * commits as u64 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "no progress");
    }
    child.kill().expect("SIGKILL the import");
    child.wait().unwrap();
    durable
}

#[test]
fn a_killed_import_resumes_after_its_last_durable_row() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("pp.csv");
    let out = pagemesh(&["generate", "--out", csv.to_str().unwrap()]);
    assert!(out.status.success());
    let db = dir.path().join("db");
    let durable = import_and_kill(&db, &csv, 40);
    assert!(durable >= 2000);

    let out = import(&db, &csv, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("unfinished import") && stderr.contains("--resume"),
        "{stderr}"
    );

    let mut changed = std::fs::read(&csv).unwrap();
    changed[100] ^= 1;
    let other = dir.path().join("other.csv");
    std::fs::write(&other, &changed).unwrap();
    let out = import(&db, &other, &["--resume"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("not the file the earlier import read"),
        "{stderr}"
    );

    let out = import(&db, &csv, &["--resume", "--batch", "500"]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    let resumed_line: u64 = stdout
        .split("rows before line ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|line| line.parse().ok())
        .unwrap_or_else(|| panic!("not resumed: {stdout}"));
    assert!(
        resumed_line > durable && resumed_line <= PricePaid::DEFAULT_COUNT,
        "{stdout}"
    );
    assert_eq!(
        summary_count(&stdout, "rows read"),
        PricePaid::DEFAULT_COUNT
    );
    let stored = table(&db);
    assert_counts_add_up(&stdout, stored.len());
    let mut want: Vec<(Vec<u8>, Vec<u8>)> = PricePaid::default()
        .records()
        .map(|record| (record.key.to_vec(), record.line.as_bytes().to_vec()))
        .collect();
    want.sort();
    assert_eq!(stored.len(), want.len());
    assert!(stored == want, "every row exactly once, with its bytes");
}
