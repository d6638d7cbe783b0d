//! The command channel's node side: a link whose first frame after the handshake is COMMAND
//! carries requests (`proto::command`), each answered with a REPLY of the same request id. Only
//! peers that passed the cluster-secret handshake get here. A malformed, unknown or unsupported
//! command gets an ERROR reply and the link stays up; anything but COMMAND ends the link.
//! Nothing is held per link but the socket and the frame being answered.
//!
//! DIGEST and ENTRIES (DIFF, `crate::diff`) read the store: each runs on a thread of its own,
//! so a digest of a large database never stalls replication on this runtime thread, and the
//! link waits for its answer. At most [`SCANS_MAX`] run at once per node (more are refused as
//! busy), and each gives up at its request's deadline (at most [`SCAN_TIME_MAX`]): the work a
//! command can cause is bounded in threads and in time.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use uuid::Uuid;

use crate::diff::{digest_ranges, range_entries, ScanEntry};
use crate::error::{Error, Result};
use crate::proto::command::{
    decode_request, encode_reply, Command, DatabaseStatus, Holder, KeyRange, LinkState, Member,
    NodeStatus, ReplicaStatus, Reply, LOOKUP_HOLDERS_MAX, MEMBERS_MAX, STATUS_DATABASES_MAX,
    STATUS_REPLICAS_MAX,
};
use crate::proto::frame::{encode, Frame, Message, PeerEntry};
use crate::proto::handshake::PeerInfo;
use crate::transport::{timeout, FrameReader, FrameWriter};

use super::link::LinkControl;
use super::{lock, Controller, Runtime, SourceDatabase};

/// Most DIGEST and ENTRIES scans running at once on a node.
pub const SCANS_MAX: usize = 2;
/// The longest a scan runs, whatever deadline its request gives.
pub const SCAN_TIME_MAX: Duration = Duration::from_secs(60);

/// Answers the commands on an accepted link, `first` included, until the peer closes it.
pub(super) async fn serve_commands(
    runtime: &Rc<Runtime>,
    control: &Rc<LinkControl>,
    mut reader: FrameReader,
    mut writer: FrameWriter,
    info: &PeerInfo,
    first: (u64, Vec<u8>),
) -> Result<()> {
    let mut next = Some(first);
    loop {
        let (request_id, payload) = match next.take() {
            Some(request) => request,
            None => {
                let link_timeout = runtime.config.link_timeout;
                let frame = tokio::select! {
                    frame = timeout(link_timeout, reader.next()) => frame,
                    () = control.closed() => return Ok(()),
                };
                match frame {
                    Err(_) => return Ok(()), // an idle command link ends quietly
                    Ok(frame) => match frame? {
                        None => return Ok(()),
                        Some(Frame::Command(message)) => {
                            (message.request_id, message.payload.to_vec())
                        }
                        Some(other) => {
                            return Err(Error::UnexpectedFrame {
                                state: "serving commands",
                                frame: other.kind(),
                            })
                        }
                    },
                }
            }
        };
        let reply = answer(runtime, &payload).await;
        if let Reply::Error { reason } = &reply {
            tracing::info!(peer = %info.name, request_id, %reason, "command refused");
        }
        let mut body = Vec::new();
        encode_reply(&reply, &mut body);
        let mut out = writer.buffer();
        encode(
            &Frame::Reply(Message {
                request_id,
                payload: &body,
            }),
            &mut out,
        );
        writer.write(out).await?;
    }
}

/// The reply to one COMMAND payload.
async fn answer(runtime: &Runtime, payload: &[u8]) -> Reply {
    let request = match decode_request(payload) {
        Ok(request) => request,
        Err(error) => {
            return Reply::Error {
                reason: error.to_string(),
            }
        }
    };
    match request.command {
        Command::Forward { to, command } if to != runtime.config.node => {
            let deadline = Duration::from_millis(u64::from(request.deadline_ms.max(1)));
            forward(runtime, to, *command, deadline).await
        }
        // Addressed to this node: answered here.
        Command::Forward { command, .. } => {
            answer_here(runtime, *command, request.deadline_ms).await
        }
        command => answer_here(runtime, command, request.deadline_ms).await,
    }
}

/// The reply to a command addressed to this node.
async fn answer_here(runtime: &Runtime, command: Command, deadline_ms: u32) -> Reply {
    match command {
        Command::Forward { .. } => Reply::Error {
            reason: "a FORWARD inside a FORWARD".into(),
        },
        Command::Status => Reply::Status(status(runtime)),
        Command::Lookup { database } => Reply::Lookup(lookup(runtime, database)),
        Command::Promote { database } => Reply::Error {
            reason: format!(
                "PROMOTE {database}: not supported yet (failover is a later issue of pagemesh)"
            ),
        },
        Command::Digest {
            database,
            split_parts,
            ranges,
        } => {
            let job = ScanJob::Digest {
                split_parts,
                ranges,
            };
            scan(runtime, deadline_ms, "DIGEST", database, job).await
        }
        Command::Entries { database, range } => {
            let job = ScanJob::Entries(range);
            scan(runtime, deadline_ms, "ENTRIES", database, job).await
        }
        Command::Replicate { database, name } => {
            control(runtime, move |controller| {
                controller.replicate(database, &name)
            })
            .await
        }
        Command::Unreplicate { database } => {
            control(runtime, move |controller| controller.unreplicate(database)).await
        }
        Command::Members => Reply::Members(members(runtime)),
        Command::Resolve { name } => {
            let controller = runtime.controller.borrow().clone();
            match controller.and_then(|controller| controller.resolve(&name)) {
                Some(database) => Reply::Resolved { database },
                None => Reply::Error {
                    reason: format!("this node knows no database named {name:?}"),
                },
            }
        }
    }
}

/// This node and the nodes its gossip view holds, at most [`MEMBERS_MAX`].
fn members(runtime: &Runtime) -> Vec<Member> {
    let members = runtime.members.borrow();
    let member = |entry: &PeerEntry| Member {
        node: entry.node,
        name: entry.name.clone(),
        addr: entry.addr,
        databases: entry.databases.clone(),
    };
    let mut all = vec![member(members.own())];
    all.extend(members.nodes().iter().map(member));
    all.truncate(MEMBERS_MAX);
    all
}

/// Asks node `to` `command` (as `pagemesh ctl` would, with this node's cluster secret) at the
/// address this node's gossip view holds for it, on a thread of its own, and returns its reply.
/// At most [`FORWARDS_MAX`] at a time, so no peer can make a node hold more threads and sockets.
async fn forward(runtime: &Runtime, to: Uuid, command: Command, deadline: Duration) -> Reply {
    let addr = runtime
        .members
        .borrow()
        .nodes()
        .into_iter()
        .find(|entry| entry.node == to && entry.addr.port() != 0)
        .map(|entry| entry.addr);
    let Some(addr) = addr else {
        return Reply::Error {
            reason: format!(
                "node {to} is not in this node's view of the mesh (or does not listen)"
            ),
        };
    };
    if runtime.forwarding.get() >= FORWARDS_MAX {
        return Reply::Error {
            reason: format!(
                "{FORWARDS_MAX} forwarded commands are under way on this node; try again"
            ),
        };
    }
    runtime.forwarding.set(runtime.forwarding.get() + 1);
    let _in_flight = Counted(&runtime.forwarding);
    let secret = runtime.config.secret.clone();
    let (done, outcome) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("pagemesh-forward".into())
        .spawn(move || {
            let _ = done.send(crate::control::request(
                addr,
                secret.as_deref(),
                command,
                deadline,
            ));
        });
    if let Err(error) = spawned {
        return Reply::Error {
            reason: format!("cannot start a thread to forward to {to}: {error}"),
        };
    }
    match outcome.await {
        Ok(Ok(reply)) => reply,
        Ok(Err(error)) => Reply::Error {
            reason: format!("forwarding to node {to} at {addr}: {error}"),
        },
        Err(_) => Reply::Error {
            reason: format!("forwarding to node {to}: the thread ended without an answer"),
        },
    }
}

/// The most forwarded commands a node carries at once.
pub const FORWARDS_MAX: usize = 4;

/// Takes one off a count of things under way when dropped.
struct Counted<'a>(&'a std::cell::Cell<usize>);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}

/// Runs `call` on the node's [`Controller`], on a thread of its own (it opens files), one call
/// at a time: a command that finds one under way is refused, so no peer can make the node hold
/// more than one such thread.
async fn control(
    runtime: &Runtime,
    call: impl FnOnce(&dyn Controller) -> std::result::Result<String, String> + Send + 'static,
) -> Reply {
    let Some(controller) = runtime.controller.borrow().clone() else {
        return Reply::Error {
            reason: "this node takes no REPLICATE or UNREPLICATE (it runs without a controller)"
                .into(),
        };
    };
    if runtime.controlling.replace(true) {
        return Reply::Error {
            reason: "another REPLICATE or UNREPLICATE is under way on this node; try again".into(),
        };
    }
    // Cleared however this ends, the future dropped at shutdown included.
    let _busy = Busy(&runtime.controlling);
    let (done, outcome) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("pagemesh-control".into())
        .spawn(move || {
            let _ = done.send(call(controller.as_ref()));
        });
    let reply = match spawned {
        Err(error) => Reply::Error {
            reason: format!("cannot start the controller's thread: {error}"),
        },
        Ok(_) => match outcome.await {
            Ok(Ok(message)) => Reply::Done { message },
            Ok(Err(reason)) => Reply::Error { reason },
            Err(_) => Reply::Error {
                reason: "the controller's thread ended without an answer (it panicked)".into(),
            },
        },
    };
    reply
}

/// Clears the runtime's "a controller call is under way" flag when dropped.
struct Busy<'a>(&'a std::cell::Cell<bool>);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.set(false);
    }
}

/// What a DIGEST or ENTRIES asks of the store, run on a thread of its own.
enum ScanJob {
    Digest {
        split_parts: u8,
        ranges: Vec<KeyRange>,
    },
    Entries(KeyRange),
}

/// Counts a running scan in [`Runtime::scans`] until dropped.
struct ScanSlot<'r>(&'r Cell<usize>);

impl Drop for ScanSlot<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

/// Answers a DIGEST or ENTRIES: refused if the node does not serve the database, if its copy
/// cannot be compared now, or if [`SCANS_MAX`] scans run already.
async fn scan(
    runtime: &Runtime,
    deadline_ms: u32,
    what: &str,
    database: Uuid,
    job: ScanJob,
) -> Reply {
    let refuse = |why: String| Reply::Error {
        reason: format!("{what} {database}: {why}"),
    };
    let Some(source) = runtime.sources.borrow().get(&database).cloned() else {
        return refuse("this node does not serve the database".into());
    };
    if let Some(why) = source.unfit_to_compare() {
        return refuse(format!("this node's copy cannot be compared: {why}"));
    }
    if runtime.scans.get() >= SCANS_MAX {
        return refuse(format!("busy: {SCANS_MAX} scans are running, retry later"));
    }
    runtime.scans.set(runtime.scans.get() + 1);
    let _slot = ScanSlot(&runtime.scans);
    let time = Duration::from_millis(u64::from(deadline_ms)).min(SCAN_TIME_MAX);
    let deadline = Instant::now() + if time.is_zero() { SCAN_TIME_MAX } else { time };
    let (done_tx, done_rx) = oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("pagemesh-scan".into())
        .spawn(move || {
            let _ = done_tx.send(run_scan(&source, job, deadline));
        });
    if let Err(error) = spawned {
        return refuse(format!("could not start a scan thread: {error}"));
    }
    match done_rx.await {
        Ok(Ok(reply)) => reply,
        Ok(Err(why)) => refuse(why),
        Err(_) => refuse("the scan thread ended before it answered".into()),
    }
}

fn run_scan(
    source: &Arc<dyn SourceDatabase>,
    job: ScanJob,
    deadline: Instant,
) -> std::result::Result<Reply, String> {
    let mut scan =
        |range: &KeyRange, visit: &mut dyn FnMut(ScanEntry<'_>) -> std::ops::ControlFlow<()>| {
            source.scan(range, visit)
        };
    let reply = match job {
        ScanJob::Digest {
            split_parts,
            ranges,
        } => digest_ranges(&mut scan, &ranges, split_parts, deadline).map(Reply::Digest),
        ScanJob::Entries(range) => {
            range_entries(&mut scan, &range).map(|(entries, more)| Reply::Entries { entries, more })
        }
    };
    reply.map_err(|error| error.to_string())
}

fn status(runtime: &Runtime) -> NodeStatus {
    let links = runtime.links.borrow();
    let following = runtime.following.borrow();
    let mut databases: Vec<DatabaseStatus> = runtime
        .sources
        .borrow()
        .iter()
        .map(|(&database, source)| {
            let log = source.log();
            let report = source.report();
            let followed = following.get(&database).map(|status| lock(status).clone());
            DatabaseStatus {
                database,
                origin: source.origin(),
                relay: log.is_follower(),
                committed_lsn: log.committed_lsn(),
                links: links
                    .values()
                    .filter(|(db, _)| *db == Some(database))
                    .count() as u32,
                epoch: log.epoch(),
                applied_lsn: report.applied_lsn,
                durable_lsn: report.durable_lsn,
                ring_slots: report.ring_slots,
                ring_used: report.ring_used_pages,
                upstream: followed
                    .as_ref()
                    .filter(|status| status.connected)
                    .and_then(|status| status.upstream),
                last_error: followed
                    .and_then(|status| status.last_error)
                    .unwrap_or_default(),
                replicas: report
                    .replicas
                    .into_iter()
                    .take(STATUS_REPLICAS_MAX)
                    .map(|replica| ReplicaStatus {
                        node: replica.node,
                        name: replica.name,
                        state: match (replica.attached, replica.sync) {
                            (false, _) => LinkState::Down,
                            (true, false) => LinkState::Async,
                            (true, true) => LinkState::Sync,
                        },
                        received_lsn: replica.received_lsn,
                        lag_pages: replica.lag_pages,
                        lag_bytes: replica.lag_bytes,
                        lag_ms: (replica.lag_seconds * 1e3) as u64,
                    })
                    .collect(),
            }
        })
        .collect();
    databases.sort_by_key(|db| db.database);
    databases.truncate(STATUS_DATABASES_MAX);
    NodeStatus {
        node: runtime.config.node,
        name: runtime.config.name.clone(),
        members: runtime.members.borrow().nodes().len() as u32,
        databases,
    }
}

/// This node, if it serves `database` and listens, then the nodes its gossip view says serve
/// it.
fn lookup(runtime: &Runtime, database: Uuid) -> Vec<Holder> {
    let members = runtime.members.borrow();
    let own = members.own();
    let mut holders: Vec<Holder> = Vec::new();
    if runtime.sources.borrow().contains_key(&database) && own.addr.port() != 0 {
        holders.push(Holder {
            node: own.node,
            addr: own.addr,
        });
    }
    holders.extend(
        members
            .nodes()
            .into_iter()
            .filter(|entry| entry.databases.contains(&database) && entry.addr.port() != 0)
            .map(|entry| Holder {
                node: entry.node,
                addr: entry.addr,
            }),
    );
    holders.truncate(LOOKUP_HOLDERS_MAX);
    holders
}
