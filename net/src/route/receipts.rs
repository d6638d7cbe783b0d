//! Receipts of a node's subtree on their way to the origin, hop by hop, I/O-free: how
//! `Replicated(n)` counts distinct nodes anywhere in the mesh without a link to each.

use std::collections::BTreeMap;

/// Receipt watermarks of a node's subtree, on their way to the origin: the highest LSN below
/// which each node (anywhere downstream) holds every page.
///
/// Each node records its own watermark and merges the reports of the peers it feeds, keeping the
/// highest per node, and reports what changed to the holder it follows; the origin so learns
/// of every receiver without a link to each, and a `Replicated(n)` commit is released once
/// [`Receipts::holders`] reaches n. A report names each node once, so the book is bounded by the
/// number of nodes (and by `nodes_max`, beyond which reports of new nodes are refused). A
/// relaying node that dies takes no receipt back: its subtree re-grafts, and reports again
/// through its new upstream; a commit waiting meanwhile waits until its timeout.
#[derive(Clone, Debug)]
pub struct Receipts<N> {
    own: N,
    book: BTreeMap<N, u64>,
    /// Entries changed since the last report.
    changed: BTreeMap<N, u64>,
    nodes_max: usize,
}

impl<N: Copy + Ord> Receipts<N> {
    /// The book of node `own`, holding at most `nodes_max` nodes.
    pub fn new(own: N, nodes_max: usize) -> Self {
        Self {
            own,
            book: BTreeMap::new(),
            changed: BTreeMap::new(),
            nodes_max,
        }
    }

    /// Whether the book has an entry for `node`.
    pub fn knows(&self, node: N) -> bool {
        self.book.contains_key(&node)
    }

    /// Whether the book holds `nodes_max` nodes: [`Receipts::record`] refuses new ones.
    pub fn is_full(&self) -> bool {
        self.book.len() >= self.nodes_max
    }

    /// `node` holds every page below `lsn`; returns whether that is news (a node not known
    /// before is news whatever its watermark, even 0: upstream counts it as a node that holds
    /// every page below `lsn`, and a database with nothing written yet has no other way to learn
    /// of it).
    pub fn record(&mut self, node: N, lsn: u64) -> bool {
        let full = self.book.len() >= self.nodes_max;
        match self.book.get_mut(&node) {
            Some(entry) if lsn <= *entry => return false,
            Some(entry) => *entry = lsn,
            None if full => return false,
            None => {
                self.book.insert(node, lsn);
            }
        }
        self.changed.insert(node, lsn);
        true
    }

    /// The entries changed since the last report (to send upstream), if any.
    pub fn take_report(&mut self) -> Option<Vec<(N, u64)>> {
        if self.changed.is_empty() {
            return None;
        }
        Some(std::mem::take(&mut self.changed).into_iter().collect())
    }

    /// Puts every entry in the next report: the node has a new upstream, which may have heard
    /// none of it (what went up the old way may have died with it).
    pub fn report_all(&mut self) {
        self.changed = self.book.clone();
    }

    /// Nodes other than this one known to hold every page below `lsn_end`.
    pub fn holders(&self, lsn_end: u64) -> usize {
        self.book
            .iter()
            .filter(|(node, lsn)| **node != self.own && **lsn >= lsn_end)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receipts_merge_by_node_and_report_only_what_changed() {
        let mut book = Receipts::new(0u32, 3);
        assert!(book.record(0, 5));
        assert!(book.record(1, 4));
        assert!(!book.record(1, 3), "watermarks never move back");
        assert_eq!(book.take_report(), Some(vec![(0, 5), (1, 4)]));
        assert_eq!(book.take_report(), None);
        assert!(book.record(2, 9));
        assert!(!book.record(3, 9), "a fourth node is beyond the bound");
        assert_eq!(book.holders(4), 2, "this node does not count itself");
        book.take_report();
        book.report_all();
        assert_eq!(book.take_report(), Some(vec![(0, 5), (1, 4), (2, 9)]));
        assert_eq!(book.holders(5), 1);

        // A node is news when first heard of, even holding nothing yet; then only as it moves.
        let mut empty = Receipts::new(0u32, 3);
        assert!(empty.record(1, 0), "a new node at 0 is news");
        assert!(!empty.record(1, 0));
        assert_eq!(empty.take_report(), Some(vec![(1, 0)]));
        assert_eq!(empty.holders(0), 1);
    }
}
