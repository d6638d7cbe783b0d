//! `pagemesh node` as a child process, for the tests that run real nodes (`tests/mesh.rs`,
//! `tests/ctl_diff.rs`).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A `pagemesh node` child; killed on drop if still running.
pub struct NodeProcess {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl NodeProcess {
    /// Starts `pagemesh node --config config` and waits for its listening address and its
    /// database line.
    pub fn start(config: &Path) -> Self {
        Self::start_until(config, "role replica")
    }

    /// Starts `pagemesh node --config config` and waits for its listening address and a line
    /// that contains `marker`. The node logs at `warn`, or at the level in env `NODE_LOG`
    /// (`NODE_LOG=info cargo test --test mesh` shows every link, refusal and graft).
    pub fn start_until(config: &Path, marker: &str) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_pagemesh"))
            .args(["node", "--config", config.to_str().expect("utf-8 path")])
            .env(
                "RUST_LOG",
                std::env::var("NODE_LOG").unwrap_or("warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start pagemesh node");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let mut addr = None;
        for line in lines.by_ref() {
            let line = line.expect("readable stdout");
            if let Some((_, at)) = line.split_once(" listening on ") {
                addr = Some(at.parse().expect("an address"));
            }
            if line.contains(marker) {
                break;
            }
        }
        let addr = addr.unwrap_or_else(|| panic!("{} printed no address", config.display()));
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Self { child, addr }
    }

    /// SIGTERM, and a clean exit.
    pub fn stop(mut self, what: &str) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        let exit = self.child.wait().expect("wait");
        assert!(exit.success(), "{what} exits cleanly on SIGTERM: {exit}");
    }
}
