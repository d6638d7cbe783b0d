//! The applier thread runs `Options::apply_nice` nice steps below the thread that opened the
//! database (capped at 19), read back from the kernel in `/proc/self/task/*/stat`. One test in
//! this binary, so the database it opens owns the only applier thread in the process.

use pagemesh_core::{Database, Durability, Options, WriteBatch, APPLY_NICE};
use pagemesh_testkit::threads::{nice_of, own_nice};

/// Opens a database in `dir` with `options`, commits through it (so the applier has run), and
/// returns the nice values of the applier threads alive meanwhile.
fn applier_nice(dir: &std::path::Path, options: Options) -> Vec<i32> {
    let db = Database::open(dir, options).unwrap();
    let mut batch = WriteBatch::new();
    batch.put("t", b"k", b"v").unwrap();
    db.commit(&batch, Durability::Applied).unwrap();
    nice_of(None, "pagemesh-applie")
}

#[test]
fn the_applier_runs_below_its_opener_by_the_configured_steps() {
    let dir = tempfile::tempdir().unwrap();
    let opener = own_nice();
    assert_eq!(
        applier_nice(&dir.path().join("default"), Options::new()),
        vec![(opener + APPLY_NICE).min(19)],
        "the default lowers the applier by APPLY_NICE steps"
    );
    assert_eq!(
        applier_nice(&dir.path().join("three"), Options::new().apply_nice(3)),
        vec![(opener + 3).min(19)]
    );
    assert_eq!(
        applier_nice(&dir.path().join("kept"), Options::new().apply_nice(0)),
        vec![opener],
        "0 keeps the opener's priority"
    );
    assert_eq!(own_nice(), opener, "the opener's own priority is untouched");
}
