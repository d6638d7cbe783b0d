//! Helpers shared by the log's integration tests: self-checking records and a draining reader.

#![allow(dead_code)]

use pagemesh_logpage::{Cursor, Log, RecordReader};

/// A record whose bytes are derived from `(writer, index)`, so a reader can check its content.
pub fn make_record(writer: u32, index: u32, len: usize) -> Vec<u8> {
    assert!(len >= 8);
    let mut bytes = Vec::with_capacity(len);
    bytes.extend_from_slice(&writer.to_le_bytes());
    bytes.extend_from_slice(&index.to_le_bytes());
    let mut x = u64::from(writer) << 32 | u64::from(index);
    while bytes.len() < len {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        bytes.push((x >> 56) as u8);
    }
    bytes
}

/// Checks a record made by `make_record`; returns its `(writer, index)`.
pub fn check_record(bytes: &[u8]) -> (u32, u32) {
    let writer = u32::from_le_bytes(bytes[0..4].try_into().unwrap());
    let index = u32::from_le_bytes(bytes[4..8].try_into().unwrap());
    assert_eq!(
        bytes,
        make_record(writer, index, bytes.len()),
        "record {writer}/{index} damaged"
    );
    (writer, index)
}

/// Reads every ready page from `cursor`, releasing as it goes; returns `(seq, bytes)` per record.
pub fn drain(cursor: &mut Cursor, reader: &mut RecordReader, out: &mut Vec<(u64, Vec<u8>)>) {
    while let Some(page) = cursor.next_ready().expect("ready page validates") {
        reader
            .feed(page, |record| {
                out.push((record.seq, record.bytes.into_owned()))
            })
            .expect("records decode");
        let position = cursor.position();
        cursor.release(position);
    }
}

/// Seals and reads everything committed so far.
pub fn drain_all(log: &Log, cursor: &mut Cursor, reader: &mut RecordReader) -> Vec<(u64, Vec<u8>)> {
    log.seal();
    let mut out = Vec::new();
    drain(cursor, reader, &mut out);
    out
}

/// What a power loss may leave of a page that no completed sync covered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Damage {
    /// Random bytes over the whole page.
    Garble,
    /// Zeros: blocks whose first write never reached the disk.
    Zero,
    /// Torn: a prefix of the page as written, zeros after it.
    Tear,
}

impl Damage {
    pub const ALL: [Damage; 3] = [Damage::Garble, Damage::Zero, Damage::Tear];

    fn apply(self, page: &mut [u8], rng: &mut impl rand::Rng) {
        match self {
            Damage::Garble => rng.fill(page),
            Damage::Zero => page.fill(0),
            Damage::Tear => {
                let kept = rng.random_range(1..page.len());
                page[kept..].fill(0);
            }
        }
    }
}

/// The log's segment files in `dir` (not its spares), by first LSN.
pub fn segments(dir: &std::path::Path) -> Vec<(u64, std::path::PathBuf)> {
    let mut found: Vec<(u64, std::path::PathBuf)> = std::fs::read_dir(dir)
        .expect("list the log directory")
        .map(|entry| entry.expect("a directory entry").path())
        .filter_map(|path| {
            let name = path.file_name()?.to_str()?;
            let stem = name.strip_prefix("log-")?.strip_suffix(".seg")?;
            let first = u64::from_str_radix(stem, 16).ok()?;
            Some((first, path))
        })
        .collect();
    found.sort();
    found
}

/// Page `lsn` as its segment in `dir` holds it (the log of a `slots`-slot ring, in segments of a
/// quarter of it), if its segment is installed.
pub fn segment_page(dir: &std::path::Path, slots: u64, lsn: u64) -> Option<Vec<u8>> {
    use pagemesh_logpage::PAGE_SIZE;
    let pages = slots / 4;
    let first = lsn - lsn % pages;
    let (_, path) = segments(dir).into_iter().find(|(f, _)| *f == first)?;
    let bytes = std::fs::read(path).expect("read a segment");
    let at = (lsn - first) as usize * PAGE_SIZE;
    Some(bytes[at..at + PAGE_SIZE].to_vec())
}

/// Damages the pages of the log's segments in `dir` (a `slots`-slot ring's) that are not a valid
/// page below `durable_lsn`, as a power loss may: each with probability `probability`, by a
/// damage drawn from `kinds`. Pages below `durable_lsn` are left intact (a completed sync put
/// them on disk). The files keep their length: it was fixed and synced when each segment was
/// installed. Returns how many pages were damaged.
pub fn damage_beyond(
    dir: &std::path::Path,
    slots: u64,
    durable_lsn: u64,
    kinds: &[Damage],
    probability: f64,
    rng: &mut impl rand::Rng,
) -> usize {
    use pagemesh_logpage::{validate, PAGE_SIZE};
    let mut damaged = 0;
    for (_, path) in segments(dir) {
        let mut bytes = std::fs::read(&path).expect("read a segment");
        assert_eq!(bytes.len() as u64, slots / 4 * PAGE_SIZE as u64);
        for page in bytes.chunks_exact_mut(PAGE_SIZE) {
            let below = validate(page).is_ok_and(|page| page.lsn() < durable_lsn);
            if below || !rng.random_bool(probability) {
                continue;
            }
            let kind = kinds[rng.random_range(0..kinds.len())];
            kind.apply(page, rng);
            damaged += 1;
        }
        std::fs::write(&path, bytes).expect("write a segment back");
    }
    damaged
}
