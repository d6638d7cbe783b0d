//! The public API as a new user meets it (issue 17): each test is one stumble a user reported,
//! and checks that the API now says or does what the user expected.

use pagemesh_core::{Database, Error, Options};

/// A second open in the same process names the cause and the directory; it used to say "ring is
/// locked by another process". Once the first handle is gone, the directory opens again.
#[test]
fn opening_a_database_twice_in_one_process_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), Options::new()).unwrap();
    // Another spelling of the same directory is the same database.
    let other_spelling = dir.path().join(".");
    let error = Database::open(&other_spelling, Options::new()).unwrap_err();
    let canonical = dir.path().canonicalize().unwrap();
    assert!(
        matches!(&error, Error::AlreadyOpen { path } if *path == canonical),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(
        message.contains("already open in this process")
            && message.contains(&*canonical.to_string_lossy()),
        "{message}"
    );
    drop(db);
    Database::open(dir.path(), Options::new()).expect("reopens once the first handle is gone");
}
