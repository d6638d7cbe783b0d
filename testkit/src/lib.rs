//! The harness of pagemesh's crash tests: a `harness = false` test binary that is its own child.
//! (And [`threads`]: what `/proc` says of a process's threads, for tests of thread priorities.)
//!
//! The parent picks its seed with [`seed`] and runs rounds: [`run_child`] starts this same binary
//! with an environment variable set and the round's arguments, lets it run for a while, kills it
//! with SIGKILL and returns what it reported. The child finds its arguments with [`child_args`],
//! works until it is killed, and tells the parent what it has made durable with [`report`]: one
//! line of numbers per fact, written in one `write`. A line the kill cut short is not returned.
//! Each test keeps its own child body and its own checks of what survived the kill, and hands
//! its checks to [`run_tests`], which gives the binary libtest's command line.
//!
//! ```no_run
//! use std::time::Duration;
//!
//! const CHILD_ENV: &str = "PAGEMESH_EXAMPLE_CRASH_CHILD";
//!
//! fn main() -> std::process::ExitCode {
//!     if let Some(args) = pagemesh_testkit::child_args(CHILD_ENV) {
//!         let round: u64 = args[0].parse().unwrap();
//!         for index in 0.. {
//!             // ... make something durable, then say so:
//!             pagemesh_testkit::report([round, index]);
//!         }
//!     }
//!     pagemesh_testkit::run_tests([("reported_records_survive_sigkill", rounds as fn())])
//! }
//!
//! fn rounds() {
//!     let seed = pagemesh_testkit::seed();
//!     for round in 0..4 {
//!         let life = Duration::from_millis(20 + (seed + round) % 100);
//!         let reported: Vec<[u64; 2]> =
//!             pagemesh_testkit::run_child(CHILD_ENV, [round.to_string()], life);
//!         // ... reopen what the child wrote and check that everything reported is there.
//!         assert!(reported.iter().all(|&[r, _]| r == round));
//!     }
//! }
//! ```

use std::ffi::{OsStr, OsString};
use std::io::{Read, Write};
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

/// The environment variable that picks the seed of a crash test; see [`seed`].
pub const SEED_ENV: &str = "PAGEMESH_CRASH_SEED";
/// The seed when [`SEED_ENV`] is not set.
pub const SEED_DEFAULT: u64 = 0x5EED;

/// The seed of this run: [`SEED_ENV`] if it holds a number, else [`SEED_DEFAULT`].
pub fn seed() -> u64 {
    std::env::var(SEED_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(SEED_DEFAULT)
}

/// In a child started by [`run_child`] with `env`: the arguments it was given. `None` in the
/// parent.
pub fn child_args(env: &str) -> Option<Vec<String>> {
    std::env::var_os(env)?;
    Some(std::env::args().skip(1).collect())
}

/// Runs `tests`, each a name and a body that panics on failure, as the tests of this
/// `harness = false` binary, with libtest's command line (`libtest-mimic`): `--list` (so
/// cargo-nextest finds them), a name filter and `--exact` (so `cargo test NAME` runs only what
/// it names), `--ignored` and `--test-threads`. One at a time unless `--test-threads` says
/// otherwise: each keeps both cores busy with its own children, and some check what one process
/// may hold open.
///
/// Call it after [`child_args`] found this process is not a child: a child's arguments are its
/// own, not libtest's.
pub fn run_tests(tests: impl IntoIterator<Item = (&'static str, fn())>) -> ExitCode {
    let mut args = libtest_mimic::Arguments::from_args();
    args.test_threads.get_or_insert(1);
    let trials = tests
        .into_iter()
        .map(|(name, body)| {
            libtest_mimic::Trial::test(name, move || {
                body();
                Ok(())
            })
        })
        .collect();
    libtest_mimic::run(&args, trials).exit_code()
}

/// In the child: reports `fields` to the parent as one line of numbers, in one `write` (a pipe
/// writes up to 4 KiB whole, so a kill cannot interleave two reports).
///
/// # Panics
///
/// If stdout cannot be written.
pub fn report<const N: usize>(fields: [u64; N]) {
    let mut line = fields.map(|field| field.to_string()).join(" ");
    line.push('\n');
    std::io::stdout()
        .lock()
        .write_all(line.as_bytes())
        .expect("report to the parent");
}

/// Starts this binary as a child with `env` set and `args`, lets it run for `life`, kills it
/// with SIGKILL, and returns every whole report of `N` numbers it wrote, in order. Its stdout is
/// read as it is written, so a full pipe never stalls it.
///
/// # Panics
///
/// If the child cannot be started, or if it exited by itself with a failure before the kill
/// (a child is meant to work until it is killed).
pub fn run_child<const N: usize>(
    env: &str,
    args: impl IntoIterator<Item = impl AsRef<OsStr>>,
    life: Duration,
) -> Vec<[u64; N]> {
    let args: Vec<OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let mut child = Command::new(std::env::current_exe().expect("own path"))
        .args(&args)
        .env(env, "1")
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn child");
    let mut stdout = child.stdout.take().expect("child stdout");
    let reader = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        // A read error ends the reports like the kill does.
        let _ = stdout.read_to_end(&mut bytes);
        bytes
    });
    std::thread::sleep(life);
    if let Some(status) = child.try_wait().expect("poll child") {
        assert!(
            status.success(),
            "child {args:?} failed before its kill: {status}"
        );
    }
    child.kill().expect("SIGKILL child");
    child.wait().expect("reap child");
    let bytes = reader.join().expect("stdout reader");
    reports(&bytes)
}

/// The whole lines of `N` numbers in `bytes`. What follows the last newline is a line the kill
/// cut short, and is dropped.
fn reports<const N: usize>(bytes: &[u8]) -> Vec<[u64; N]> {
    let whole = match bytes.iter().rposition(|&b| b == b'\n') {
        Some(last) => &bytes[..last],
        None => return Vec::new(),
    };
    String::from_utf8_lossy(whole)
        .split('\n')
        .filter_map(parse)
        .collect()
}

/// A line of exactly `N` numbers separated by single spaces.
fn parse<const N: usize>(line: &str) -> Option<[u64; N]> {
    let mut fields = line.split(' ').map(str::parse::<u64>);
    let mut out = [0; N];
    for slot in &mut out {
        *slot = fields.next()?.ok()?;
    }
    fields.next().is_none().then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_reads_back_and_a_cut_line_is_dropped() {
        let bytes = b"1 2 3\n4 5 6\n7 8";
        assert_eq!(reports::<3>(bytes), [[1, 2, 3], [4, 5, 6]]);
        assert_eq!(reports::<3>(b"1 2 3\n1 2\n1 2 3 4\nx 2 3\n"), [[1, 2, 3]]);
        assert!(reports::<3>(b"").is_empty());
        assert!(reports::<3>(b"1 2 3").is_empty());
    }
}

/// What `/proc` says of this process's threads, for tests that check what a thread set for
/// itself (pagemesh's applier lowers its own CPU priority).
pub mod threads {
    /// The nice value of every thread of process `pid` (`None`: this process) named `name`, as
    /// the kernel keeps names: cut to 15 bytes. A thread that ends while they are listed is
    /// left out; an unreadable process has none.
    pub fn nice_of(pid: Option<u32>, name: &str) -> Vec<i32> {
        let tasks = match pid {
            Some(pid) => format!("/proc/{pid}/task"),
            None => "/proc/self/task".to_string(),
        };
        let Ok(tasks) = std::fs::read_dir(tasks) else {
            return Vec::new();
        };
        let mut nice = Vec::new();
        for task in tasks.flatten() {
            let (Ok(comm), Ok(stat)) = (
                std::fs::read_to_string(task.path().join("comm")),
                std::fs::read_to_string(task.path().join("stat")),
            ) else {
                continue;
            };
            if comm.trim_end() == name {
                nice.extend(nice_in_stat(&stat));
            }
        }
        nice
    }

    /// The calling thread's nice value.
    ///
    /// # Panics
    /// If `/proc/thread-self/stat` cannot be read or parsed (no procfs).
    pub fn own_nice() -> i32 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat")
            .expect("/proc/thread-self/stat: procfs is needed");
        nice_in_stat(&stat).expect("a nice value in /proc/thread-self/stat")
    }

    /// The nice value in a `/proc/.../stat` line: field 19, the parenthesised name (which may
    /// hold spaces and parentheses) being field 2.
    fn nice_in_stat(stat: &str) -> Option<i32> {
        let after_name = &stat[stat.rfind(')')? + 1..];
        after_name.split_whitespace().nth(19 - 3)?.parse().ok()
    }
}
