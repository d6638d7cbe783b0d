//! The command channel's node side: a link whose first frame after the handshake is COMMAND
//! carries requests (`proto::command`), each answered with a REPLY of the same request id. Only
//! peers that passed the cluster-secret handshake get here. A malformed, unknown or unsupported
//! command gets an ERROR reply and the link stays up; anything but COMMAND ends the link.
//! Nothing is held per link but the socket and the frame being answered.

use std::rc::Rc;
use std::time::Duration;

use uuid::Uuid;

use crate::error::{Error, Result};
use crate::proto::command::{
    decode_request, encode_reply, Command, DatabaseStatus, Holder, LinkState, NodeStatus,
    ReplicaStatus, Reply, LOOKUP_HOLDERS_MAX, STATUS_DATABASES_MAX, STATUS_REPLICAS_MAX,
};
use crate::proto::frame::{encode, Frame, Message};
use crate::proto::handshake::PeerInfo;
use crate::transport::{timeout, FrameReader, FrameWriter};

use super::link::LinkControl;
use super::{lock, Controller, Runtime};

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
        Command::Forward { command, .. } => answer_here(runtime, *command).await,
        command => answer_here(runtime, command).await,
    }
}

/// The reply to a command addressed to this node.
async fn answer_here(runtime: &Runtime, command: Command) -> Reply {
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
        Command::Replicate { database, name } => {
            control(runtime, move |controller| {
                controller.replicate(database, &name)
            })
            .await
        }
        Command::Unreplicate { database } => {
            control(runtime, move |controller| controller.unreplicate(database)).await
        }
    }
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
fn lookup(runtime: &Runtime, database: uuid::Uuid) -> Vec<Holder> {
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
