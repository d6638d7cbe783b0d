//! The copies a node keeps because a command asked for them (REPLICATE on the command channel,
//! `pagemesh ctl replicate`), not because the application that embeds it did. Each follows the
//! holders the membership gossip knows, as [`Node::replicate_discovered`] does, with default
//! [`Options`]. The list is kept in [`COMMANDED_REPLICAS_FILE`] in the data directory, one
//! `uuid name` line per copy, rewritten whole on every change (a temporary file, synced, renamed
//! over the old one, the directory synced), so a restarted node takes them all up again, and a
//! crash mid-change leaves the old list or the new one, never half of each. UNREPLICATE stops a
//! copy and forgets it; its files stay where they are.
//!
//! [`Node::replicate_discovered`]: super::Node::replicate_discovered

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use pagemesh_core::Options;
use pagemesh_net::{Controller, Service};
use uuid::Uuid;

use super::{lock, start_replica, NodeError, Replica, Watched};

/// The file in a node's data directory that lists the copies REPLICATE commands started.
pub const COMMANDED_REPLICAS_FILE: &str = "replicas.commanded";

/// The longest name a commanded copy may have (a directory name under the data directory).
const NAME_MAX: usize = 64;

/// The most commanded copies a node keeps: each holds an LMDB environment, a ring and threads,
/// so what peers may make a node hold by command is bounded.
pub const COMMANDED_REPLICAS_MAX: usize = 64;

/// The node's commanded copies, and what it takes to start more (the node's own parts; the
/// service weakly, since the service holds this as its [`Controller`]).
pub(super) struct Commanded {
    service: Weak<Service>,
    data_dir: PathBuf,
    open: Arc<Mutex<HashMap<PathBuf, ()>>>,
    watched: Arc<Mutex<Watched>>,
    replicas: Mutex<BTreeMap<Uuid, Replica>>,
}

impl std::fmt::Debug for Commanded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Commanded")
            .field("replicas", &self.list())
            .finish_non_exhaustive()
    }
}

impl Commanded {
    pub(super) fn new(
        service: Weak<Service>,
        data_dir: PathBuf,
        open: Arc<Mutex<HashMap<PathBuf, ()>>>,
        watched: Arc<Mutex<Watched>>,
    ) -> Self {
        Self {
            service,
            data_dir,
            open,
            watched,
            replicas: Mutex::new(BTreeMap::new()),
        }
    }

    /// Database and name of each commanded copy.
    pub(super) fn list(&self) -> Vec<(Uuid, String)> {
        lock(&self.replicas)
            .iter()
            .map(|(&database, replica)| (database, replica.name.clone()))
            .collect()
    }

    /// Takes up the copies the file lists (when the node opens).
    pub(super) fn restore(&self) -> Result<(), NodeError> {
        let path = self.file();
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(source) => {
                return Err(NodeError::Io {
                    op: "read",
                    path,
                    source,
                })
            }
        };
        let mut replicas = lock(&self.replicas);
        for (index, line) in text.lines().enumerate() {
            let bad = |reason: String| NodeError::CommandedReplicas {
                path: path.clone(),
                line: index + 1,
                reason,
            };
            let Some((database, name)) = line.split_once(' ') else {
                return Err(bad("expected `uuid name`".into()));
            };
            let database: Uuid = database
                .parse()
                .map_err(|error| bad(format!("not a uuid ({error})")))?;
            check_name(name).map_err(bad)?;
            if replicas.contains_key(&database) {
                return Err(bad(format!("{database} is listed twice")));
            }
            let replica = self.start(database, name)?;
            tracing::info!(%database, name, "took up a commanded copy");
            replicas.insert(database, replica);
        }
        Ok(())
    }

    fn start(&self, database: Uuid, name: &str) -> Result<Replica, NodeError> {
        let service =
            self.service
                .upgrade()
                .ok_or(NodeError::Net(pagemesh_net::Error::ThreadEnded {
                    thread: "network",
                }))?;
        start_replica(
            &service,
            &self.data_dir,
            &self.open,
            &self.watched,
            name,
            Options::new(),
            |service, slot| Ok(service.subscribe_discovered(database, slot)),
        )
    }

    fn file(&self) -> PathBuf {
        self.data_dir.join(COMMANDED_REPLICAS_FILE)
    }

    /// Writes the list of `replicas` in place of the file's.
    fn save(&self, replicas: &BTreeMap<Uuid, Replica>) -> Result<(), NodeError> {
        let path = self.file();
        let temporary = self.data_dir.join(format!("{COMMANDED_REPLICAS_FILE}.tmp"));
        let io = |op, path: &Path| {
            let path = path.to_path_buf();
            move |source| NodeError::Io { op, path, source }
        };
        {
            let mut file = std::fs::File::create(&temporary).map_err(io("create", &temporary))?;
            for (database, replica) in replicas {
                writeln!(file, "{database} {}", replica.name).map_err(io("write", &temporary))?;
            }
            file.sync_all().map_err(io("sync", &temporary))?;
        }
        std::fs::rename(&temporary, &path).map_err(io("rename", &path))?;
        std::fs::File::open(&self.data_dir)
            .and_then(|dir| dir.sync_all())
            .map_err(io("sync", &self.data_dir))
    }
}

impl Controller for Commanded {
    fn replicate(&self, database: Uuid, name: &str) -> Result<String, String> {
        check_name(name)?;
        let mut replicas = lock(&self.replicas);
        if let Some(replica) = replicas.get(&database) {
            return Err(format!(
                "this node already keeps a copy of {database}, named {}",
                replica.name
            ));
        }
        if replicas.len() >= COMMANDED_REPLICAS_MAX {
            return Err(format!(
                "this node keeps {COMMANDED_REPLICAS_MAX} commanded copies, the most it takes"
            ));
        }
        let replica = self
            .start(database, name)
            .map_err(|error| format!("cannot start a copy of {database} as {name}: {error}"))?;
        replicas.insert(database, replica);
        if let Err(error) = self.save(&replicas) {
            // Not kept across a restart: not started either.
            replicas.remove(&database);
            return Err(format!("cannot record the copy of {database}: {error}"));
        }
        tracing::info!(%database, name, "replicating on command");
        Ok(format!(
            "replicating {database} as {name}, from the holders the mesh knows"
        ))
    }

    fn resolve(&self, name: &str) -> Option<Uuid> {
        lock(&self.watched).resolve(name)
    }

    fn unreplicate(&self, database: Uuid) -> Result<String, String> {
        let mut replicas = lock(&self.replicas);
        let Some(replica) = replicas.remove(&database) else {
            return Err(format!(
                "no copy of {database} that a REPLICATE started is on this node"
            ));
        };
        if let Err(error) = self.save(&replicas) {
            replicas.insert(database, replica);
            return Err(format!("cannot record that {database} stops: {error}"));
        }
        let path = self.data_dir.join(&replica.name);
        drop(replica);
        tracing::info!(%database, path = %path.display(), "stopped a commanded copy");
        Ok(format!(
            "stopped replicating {database}; its files stay in {}",
            path.display()
        ))
    }
}

/// A commanded copy's name is one directory under the data directory: 1 to 64 bytes of
/// letters, digits, `-`, `_` and `.`, not `.` or `..`.
fn check_name(name: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "-_.".contains(c);
    if name.is_empty() || name.len() > NAME_MAX || !name.chars().all(allowed) {
        return Err(format!(
            "replica name {name:?}: 1 to {NAME_MAX} letters, digits, '-', '_' or '.'"
        ));
    }
    if name == "." || name == ".." {
        return Err(format!(
            "replica name {name:?} is not a directory of its own"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_name;

    #[test]
    fn names_stay_one_directory_under_the_data_directory() {
        for good in ["copy", "prices-2", "a.b_c"] {
            assert_eq!(check_name(good), Ok(()));
        }
        for bad in ["", ".", "..", "a/b", "/abs", "sp ace", "é", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
