//! The store under each simulated node: a map that applies records in log order, as LMDB does in
//! the real node, with what survives a crash and what a snapshot carries.
//!
//! A record is a put: `[key length: u8][key][value]`. The store applies each record once: it
//! keeps the sequence number past the last record applied, and skips records below it when a
//! reader re-reads a page (after a crash, or from a snapshot's resume page).

use std::collections::BTreeMap;

use pagemesh_logpage::page::PageRef;
use pagemesh_logpage::RecordReader;

/// A model store. Everything in it is durable (LMDB commits each apply step); only the record
/// reader's partial record is lost in a crash, which is why [`Store::resume_lsn`] exists.
#[derive(Debug)]
pub struct Store {
    map: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Every page below this was applied.
    next_lsn: u64,
    /// Records below this sequence number were applied.
    applied_seq: u64,
    /// The page where the record the reader holds in part began.
    pending_start: Option<u64>,
    reader: RecordReader,
}

impl Store {
    /// An empty store whose log starts at `lsn`.
    pub fn new(lsn: u64) -> Self {
        Self::with(BTreeMap::new(), lsn, 0)
    }

    fn with(map: BTreeMap<Vec<u8>, Vec<u8>>, lsn: u64, applied_seq: u64) -> Self {
        Self {
            map,
            next_lsn: lsn,
            applied_seq,
            pending_start: None,
            reader: RecordReader::new(),
        }
    }

    /// Every page below this was applied.
    pub fn next_lsn(&self) -> u64 {
        self.next_lsn
    }

    /// Where reading must resume after a crash (or from a snapshot) to see every record not yet
    /// applied: the page where a record only partly read began, else [`Store::next_lsn`]. The
    /// ring must retain pages from here on.
    pub fn resume_lsn(&self) -> u64 {
        self.pending_start.unwrap_or(self.next_lsn)
    }

    /// The state: every key and its value.
    pub fn map(&self) -> &BTreeMap<Vec<u8>, Vec<u8>> {
        &self.map
    }

    /// A crash: the reader's partial record is lost; reading starts again at the resume page.
    pub fn crash(&mut self) {
        self.next_lsn = self.resume_lsn();
        self.pending_start = None;
        self.reader = RecordReader::new();
    }

    /// Applies page `page`, which must be the next one.
    pub fn apply(&mut self, page: PageRef<'_>) -> Result<(), String> {
        let lsn = page.lsn();
        if lsn != self.next_lsn {
            return Err(format!(
                "applier fed page {lsn} while expecting {}",
                self.next_lsn
            ));
        }
        let was_mid = self.reader.is_mid_record();
        let mut completed = 0;
        let (map, applied_seq) = (&mut self.map, &mut self.applied_seq);
        let mut malformed = None;
        self.reader
            .feed(page, |record| {
                completed += 1;
                if record.seq < *applied_seq {
                    return;
                }
                *applied_seq = record.seq + 1;
                match decode(&record.bytes) {
                    Some((key, value)) => {
                        map.insert(key.to_vec(), value.to_vec());
                    }
                    None => malformed = Some(record.seq),
                }
            })
            .map_err(|error| format!("page {lsn}: {error}"))?;
        if let Some(seq) = malformed {
            return Err(format!("page {lsn}: record {seq} is not a put"));
        }
        self.pending_start = match self.reader.is_mid_record() {
            false => None,
            true if completed > 0 || !was_mid => Some(lsn),
            true => self.pending_start,
        };
        self.next_lsn = lsn + 1;
        Ok(())
    }

    /// The snapshot a source sends: the resume page, the applied sequence and every entry.
    pub fn snapshot(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&self.resume_lsn().to_le_bytes());
        out.extend_from_slice(&self.applied_seq.to_le_bytes());
        for (key, value) in &self.map {
            out.push(key.len() as u8);
            out.extend_from_slice(key);
            out.extend_from_slice(&(value.len() as u32).to_le_bytes());
            out.extend_from_slice(value);
        }
        out
    }

    /// A store restored from [`Store::snapshot`]'s bytes.
    pub fn restore(bytes: &[u8]) -> Result<Self, String> {
        let bad = || "snapshot is truncated".to_string();
        let (lsn, rest) = bytes.split_first_chunk::<8>().ok_or_else(bad)?;
        let (seq, mut rest) = rest.split_first_chunk::<8>().ok_or_else(bad)?;
        let mut map = BTreeMap::new();
        while let Some((&key_len, after)) = rest.split_first() {
            let (key, after) = after.split_at_checked(key_len as usize).ok_or_else(bad)?;
            let (len, after) = after.split_first_chunk::<4>().ok_or_else(bad)?;
            let (value, after) = after
                .split_at_checked(u32::from_le_bytes(*len) as usize)
                .ok_or_else(bad)?;
            map.insert(key.to_vec(), value.to_vec());
            rest = after;
        }
        Ok(Self::with(
            map,
            u64::from_le_bytes(*lsn),
            u64::from_le_bytes(*seq),
        ))
    }
}

/// A put record.
pub fn encode(key: &[u8], value: &[u8]) -> Vec<u8> {
    let mut record = Vec::with_capacity(1 + key.len() + value.len());
    record.push(key.len() as u8);
    record.extend_from_slice(key);
    record.extend_from_slice(value);
    record
}

fn decode(record: &[u8]) -> Option<(&[u8], &[u8])> {
    let (&key_len, rest) = record.split_first()?;
    rest.split_at_checked(key_len as usize)
}
