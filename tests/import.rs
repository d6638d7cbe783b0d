//! `pagemesh generate`, `import`, `backup` and `restore` as a user runs them: real processes, real
//! files. The full 106,178-record data set goes in and every row is found by its key, also in a
//! backup restored elsewhere; a file with bad rows imports the good ones and names each bad one.

use std::process::Command;

use pagemesh_core::{Database, Options};
use pagemesh_tools::workload::price_paid::PricePaid;

/// Runs pagemesh and asserts it succeeded, showing its stderr if not.
fn pagemesh_ok(args: &[&str]) {
    let out = pagemesh(args);
    assert!(
        out.status.success(),
        "pagemesh {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn pagemesh(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_pagemesh"))
        .args(args)
        .output()
        .expect("run pagemesh")
}

#[test]
fn the_generated_data_set_imports_completely() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("pp.csv");
    let db = dir.path().join("db");
    pagemesh_ok(&["generate", "--out", csv.to_str().unwrap()]);
    pagemesh_ok(&[
        "import",
        "--db",
        db.to_str().unwrap(),
        "--csv",
        csv.to_str().unwrap(),
        "--table",
        "price_paid",
        "--key-column",
        "0",
        "--batch",
        "500",
    ]);
    let backup = dir.path().join("pp.snapshot");
    let copy = dir.path().join("copy");
    pagemesh_ok(&["backup", db.to_str().unwrap(), backup.to_str().unwrap()]);
    pagemesh_ok(&["restore", backup.to_str().unwrap(), copy.to_str().unwrap()]);
    for path in [&db, &copy] {
        let db = Database::open(path, Options::new()).unwrap();
        let snapshot = db.read().unwrap();
        assert_eq!(snapshot.prefix("price_paid", b"").unwrap().count(), 106_178);
        for record in PricePaid::default().records().step_by(997) {
            let stored = snapshot
                .get("price_paid", &record.key)
                .unwrap()
                .expect("imported");
            assert_eq!(stored.bytes, record.line.as_bytes(), "{}", path.display());
        }
    }
}

#[test]
fn bad_rows_are_reported_by_line_and_the_rest_imported() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("bad.csv");
    std::fs::write(&csv, "k1,a,b\nk2,a\n,a,b\nk4,\"x\"y,b\nk5,a,b\n").unwrap();
    let db = dir.path().join("db");
    let out = pagemesh(&[
        "import",
        "--db",
        db.to_str().unwrap(),
        "--csv",
        csv.to_str().unwrap(),
        "--table",
        "t",
        "--key-column",
        "0",
    ]);
    assert!(!out.status.success(), "bad rows make the command fail");
    let stderr = String::from_utf8_lossy(&out.stderr);
    for line in ["line 2:", "line 3:", "line 4:"] {
        assert!(
            stderr.contains(line),
            "line {line} not reported in: {stderr}"
        );
    }
    let db = Database::open(&db, Options::new()).unwrap();
    let keys: Vec<Vec<u8>> = db
        .read()
        .unwrap()
        .prefix("t", b"")
        .unwrap()
        .map(|e| e.unwrap().0.to_vec())
        .collect();
    assert_eq!(keys, [b"k1".to_vec(), b"k5".to_vec()]);
}
