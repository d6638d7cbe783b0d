//! Snapshot streaming: a source exports a full snapshot on a thread of its own into SNAPSHOT
//! chunks; a replica restores the chunks on a thread of its own. Both sides hold at most a few
//! chunks in memory (bounded channels).

use std::io::{Read, Write};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::link::LinkControl;
use super::source::Shipping;
use super::{ReplicaDatabase, SourceDatabase};
use crate::error::{BoxError, Error, Result};
use crate::proto::frame::{encode, Frame, SnapshotChunk};
use crate::transport::FrameWriter;

/// Bytes per SNAPSHOT chunk.
const SNAPSHOT_CHUNK: usize = 1 << 20;

/// A restore in progress: where its chunks go, and its verdict (the replica and its resume LSN).
pub(super) type RestoreJob = (
    mpsc::Sender<Vec<u8>>,
    oneshot::Receiver<Result<(Arc<dyn ReplicaDatabase>, u64), BoxError>>,
);

/// Streams a full snapshot of `source`; returns the LSN to continue from.
pub(super) async fn send_snapshot(
    control: &LinkControl,
    source: &Arc<dyn SourceDatabase>,
    writer: &mut FrameWriter,
    shipping: &Shipping,
) -> Result<u64> {
    let (database, origin) = (source.uuid(), source.origin());
    tracing::info!(%database, "sending a full snapshot");
    let (chunks_tx, mut chunks_rx) = mpsc::channel::<Vec<u8>>(4);
    let (done_tx, done_rx) = oneshot::channel();
    let exporter = Arc::clone(source);
    std::thread::Builder::new()
        .name("pagemesh-snapshot".into())
        .spawn(move || {
            let mut out = ChunkWriter {
                chunks: chunks_tx,
                buf: Vec::with_capacity(SNAPSHOT_CHUNK),
            };
            let outcome = exporter.snapshot(&mut out).and_then(|lsn| {
                out.flush_chunk().map_err(|e| e.to_string())?;
                Ok(lsn)
            });
            let _ = done_tx.send(outcome);
        })
        .map_err(|source| Error::Spawn {
            thread: "pagemesh-snapshot".into(),
            source,
        })?;
    let mut offset = 0u64;
    while let Some(chunk) = chunks_rx.recv().await {
        if control.closed.get() {
            return Err(Error::LinkClosed {
                state: "sending a snapshot",
            });
        }
        let mut batch = writer.buffer();
        encode(
            &Frame::Snapshot(SnapshotChunk {
                database,
                origin,
                snapshot_lsn: 0,
                offset,
                last: false,
                data: &chunk,
            }),
            &mut batch,
        );
        shipping.write(writer, batch).await?;
        offset += chunk.len() as u64;
    }
    let lsn = done_rx
        .await
        .map_err(|_| Error::ThreadEnded { thread: "snapshot" })?
        .map_err(|source| Error::Source {
            database,
            op: "export snapshot",
            source,
        })?;
    let mut batch = writer.buffer();
    encode(
        &Frame::Snapshot(SnapshotChunk {
            database,
            origin,
            snapshot_lsn: lsn,
            offset,
            last: true,
            data: &[],
        }),
        &mut batch,
    );
    shipping.write(writer, batch).await?;
    tracing::info!(%database, bytes = offset, lsn, "snapshot sent");
    Ok(lsn)
}

/// A `Write` that hands fixed-size chunks to the link task (blocking the exporter while the link
/// is behind: bounded memory).
pub(super) struct ChunkWriter {
    chunks: mpsc::Sender<Vec<u8>>,
    buf: Vec<u8>,
}

impl ChunkWriter {
    pub(super) fn flush_chunk(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(SNAPSHOT_CHUNK));
        self.chunks
            .blocking_send(chunk)
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "link closed"))
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let room = SNAPSHOT_CHUNK - self.buf.len();
        let n = room.min(bytes.len());
        self.buf.extend_from_slice(&bytes[..n]);
        if self.buf.len() == SNAPSHOT_CHUNK {
            self.flush_chunk()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A `Read` over chunks arriving from the link task (blocking the restorer until they come).
pub(super) struct ChunkReader {
    chunks: mpsc::Receiver<Vec<u8>>,
    current: Vec<u8>,
    at: usize,
}

impl ChunkReader {
    pub(super) fn new(chunks: mpsc::Receiver<Vec<u8>>) -> Self {
        Self {
            chunks,
            current: Vec::new(),
            at: 0,
        }
    }
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.current.len() {
            match self.chunks.blocking_recv() {
                Some(chunk) => {
                    self.current = chunk;
                    self.at = 0;
                }
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len() - self.at);
        buf[..n].copy_from_slice(&self.current[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}
