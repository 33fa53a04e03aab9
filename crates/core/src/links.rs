//! Refs written inside content: the links that keep content reachable.
//!
//! The seed's patterns build structures out of content that names other
//! content (a linked list's node names the next node, a log entry names
//! the previous one, a snapshot names its parts), each by its ref written
//! as 64 hex digits. Garbage collection must follow those links, or it
//! takes everything a structure holds past its labelled head.
//!
//! The rule is deliberately simple and conservative: any run of exactly 64
//! hex digits (either case), bounded by a non-hex byte or the end of the
//! content, is a link to the content with that digest, if the store holds
//! it. Binary formats that keep raw 32-byte digests are not followed.
//! Links are found once, while content is written (the same pass that
//! hashes it), and kept in the object's own index row, so that gc and
//! export never re-read content to find them and a write that names a ref
//! touches no index page a plain write does not. The row keeps only each
//! target's first [`PREFIX_BYTES`] bytes: a whole digest made the row big
//! enough to slow every write (issue 24's measurements), and a prefix is
//! enough to follow a link. A prefix that matches more than one object
//! keeps them all, so a (vanishingly rare) collision keeps too much, never
//! too little.

use std::collections::{BTreeSet, HashSet};

use crate::names::{Digest, StoreId};

/// Hex digits in a ref.
const REF_DIGITS: usize = 64;

/// How much of a target's digest an index row keeps. Among a million
/// objects, a prefix this long matches another object about once in 10^13.
pub(crate) const PREFIX_BYTES: usize = 8;

/// The part of a link's target an index row keeps.
pub(crate) type LinkPrefix = [u8; PREFIX_BYTES];

/// The prefix an index row keeps of `digest`.
pub(crate) fn prefix_of(digest: &Digest) -> LinkPrefix {
    let mut prefix = [0; PREFIX_BYTES];
    prefix.copy_from_slice(&digest.0[..PREFIX_BYTES]);
    prefix
}

/// The most distinct links one object may record. Past it the object
/// keeps only this many (the first found) and says it overflowed, so
/// that memory while writing stays bounded whatever the content holds.
/// Sixty-four thousand links is 4 MiB of hex text.
pub(crate) const MAX_LINKS_PER_OBJECT: usize = 65_536;

/// Marks a byte that is not a hex digit in [`HEX_VALUES`].
const NOT_HEX: u8 = 0xff;

/// Each byte's value as a hex digit, or [`NOT_HEX`]: one lookup per byte
/// on the write path.
const HEX_VALUES: [u8; 256] = {
    let mut table = [NOT_HEX; 256];
    let mut byte = 0;
    while byte < 256 {
        table[byte] = match byte as u8 {
            digit @ b'0'..=b'9' => digit - b'0',
            letter @ b'a'..=b'f' => letter - b'a' + 10,
            letter @ b'A'..=b'F' => letter - b'A' + 10,
            _ => NOT_HEX,
        };
        byte += 1;
    }
    table
};

/// Finds links in content fed piece by piece: a run of hex digits may
/// span pieces.
#[derive(Debug, Default)]
pub(crate) struct LinkScanner<'a> {
    /// The digest being read, filled two digits a byte.
    current: [u8; 32],
    /// Hex digits in the current run (counted past 64, to reject it).
    run: usize,
    found: BTreeSet<Digest>,
    overflowed: bool,
    /// When set, only links to these objects are kept (and no limit
    /// applies, since they are bounded by the store's objects).
    within: Option<&'a HashSet<Digest>>,
}

impl<'a> LinkScanner<'a> {
    /// A scanner with nothing read.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// A scanner that keeps only links to `objects`.
    pub(crate) fn within(objects: &'a HashSet<Digest>) -> Self {
        Self {
            within: Some(objects),
            ..Self::default()
        }
    }

    /// Reads the next piece of content, looking at about one byte in 64
    /// of content that holds no long hex run: a run of 64 digits starting
    /// anywhere in `[at, at + 64)` covers byte `at + 63`, so where that
    /// byte is not a hex digit the whole window is skipped. A run that
    /// reaches the piece's end is carried into the next one.
    pub(crate) fn update(&mut self, bytes: &[u8]) {
        let is_hex = |at: usize| HEX_VALUES[usize::from(bytes[at])] != NOT_HEX;
        let mut at = 0;
        // A run the last piece ended in goes on until a non-hex byte.
        if self.run > 0 {
            while at < bytes.len() && is_hex(at) {
                self.push_digit(bytes[at]);
                at += 1;
            }
            if at == bytes.len() {
                return;
            }
            self.end_run();
            at += 1;
        }
        // Every run starting before `at` has been dealt with, and the byte
        // before `at` (if any) is not a hex digit.
        while at + REF_DIGITS <= bytes.len() {
            let probe = at + REF_DIGITS - 1;
            if !is_hex(probe) {
                at = probe + 1;
                continue;
            }
            let start = (at..probe)
                .rev()
                .find(|&i| !is_hex(i))
                .map_or(at, |i| i + 1);
            let end = (probe..bytes.len())
                .find(|&i| !is_hex(i))
                .unwrap_or(bytes.len());
            if end == bytes.len() {
                self.carry(&bytes[start..]);
                return;
            }
            if end - start == REF_DIGITS {
                self.carry(&bytes[start..end]);
                self.end_run();
            }
            at = end + 1;
        }
        // Fewer than 64 bytes left: only a run reaching the end matters,
        // since the next piece may continue it.
        let start = (at..bytes.len())
            .rev()
            .find(|&i| !is_hex(i))
            .map_or(at, |i| i + 1);
        self.carry(&bytes[start..]);
    }

    /// Starts a run with `digits` (all hex).
    fn carry(&mut self, digits: &[u8]) {
        for &digit in digits {
            self.push_digit(digit);
        }
    }

    /// Adds a hex digit to the current run.
    fn push_digit(&mut self, byte: u8) {
        let value = HEX_VALUES[usize::from(byte)];
        if self.run < REF_DIGITS {
            let slot = &mut self.current[self.run / 2];
            if self.run.is_multiple_of(2) {
                *slot = value << 4;
            } else {
                *slot |= value;
            }
        }
        self.run = self.run.saturating_add(1);
    }

    fn end_run(&mut self) {
        if self.run == REF_DIGITS {
            if let Some(objects) = self.within {
                if objects.contains(&Digest(self.current)) {
                    self.found.insert(Digest(self.current));
                }
            } else if self.found.len() < MAX_LINKS_PER_OBJECT {
                self.found.insert(Digest(self.current));
            } else if !self.found.contains(&Digest(self.current)) {
                self.overflowed = true;
            }
        }
        self.run = 0;
    }

    /// The distinct links found, leaving out `own` (content cannot name
    /// itself, but a self-reference costs nothing to ignore).
    pub(crate) fn finish(mut self, own: Digest) -> Links {
        self.end_run();
        self.found.remove(&own);
        Links {
            targets: self.found.into_iter().collect(),
            overflowed: self.overflowed,
        }
    }
}

/// The links found in one object's content.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Links {
    /// Distinct digests, in order.
    pub(crate) targets: Vec<Digest>,
    /// Whether the content held more than [`MAX_LINKS_PER_OBJECT`]
    /// distinct links, so that `targets` is not all of them; the object is
    /// then scanned again by gc, against the objects the store holds.
    pub(crate) overflowed: bool,
}

impl Links {
    /// The targets as an index row keeps them: the digests end to end;
    /// `None` when there are none, or when they overflowed (gc then scans
    /// the content itself, so a partial list would only cost space).
    pub(crate) fn column(&self) -> Option<Vec<u8>> {
        if self.targets.is_empty() || self.overflowed {
            return None;
        }
        Some(targets_column(&self.targets))
    }

    /// The links in `content`, whose digest is `own`.
    pub(crate) fn of(content: &[u8], own: Digest) -> Self {
        let mut scanner = LinkScanner::new();
        scanner.update(content);
        scanner.finish(own)
    }
}

/// `targets` as an index row keeps them: their prefixes end to end.
pub(crate) fn targets_column(targets: &[Digest]) -> Vec<u8> {
    targets.iter().flat_map(prefix_of).collect()
}

/// The digests in `sorted` (ascending) that begin with `prefix`.
pub(crate) fn with_prefix<'a>(sorted: &'a [Digest], prefix: &LinkPrefix) -> &'a [Digest] {
    let first = sorted.partition_point(|digest| digest.0[..PREFIX_BYTES] < prefix[..]);
    let count = sorted[first..]
        .iter()
        .take_while(|digest| digest.0[..PREFIX_BYTES] == prefix[..])
        .count();
    &sorted[first..first + count]
}

/// An index row's links column that is not a whole number of prefixes: a
/// damaged index, which gc must not guess past.
#[derive(Debug, thiserror::Error)]
#[error(
    "store {store}: the links recorded for content {object} are damaged \
     ({len} bytes, not a whole number of {PREFIX_BYTES}-byte prefixes), so gc cannot tell \
     what it keeps"
)]
pub(crate) struct DamagedLinks {
    store: String,
    object: crate::names::ContentRef,
    len: usize,
}

/// The prefixes of `source`'s links column, as [`targets_column`] wrote
/// them.
pub(crate) fn column_targets(
    store: &StoreId,
    source: Digest,
    column: &[u8],
) -> std::result::Result<Vec<LinkPrefix>, DamagedLinks> {
    if !column.len().is_multiple_of(PREFIX_BYTES) {
        return Err(DamagedLinks {
            store: store.to_string(),
            object: source.into(),
            len: column.len(),
        });
    }
    Ok(column
        .chunks_exact(PREFIX_BYTES)
        .map(|prefix| prefix.try_into().expect("chunks are whole prefixes"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(content: &[u8]) -> String {
        Digest::of(content).to_hex()
    }

    #[test]
    fn a_run_of_exactly_64_hex_digits_is_a_link_in_either_case() {
        let a = hex(b"a");
        let b = hex(b"b").to_uppercase();
        let content = format!("{{\"next\":\"{a}\",\"other\":[\"{b}\"]}}");
        let links = Links::of(content.as_bytes(), Digest::of(b"x"));
        let mut expected = vec![Digest::of(b"a"), Digest::of(b"b")];
        expected.sort();
        assert_eq!(links.targets, expected);
        assert!(!links.overflowed);
    }

    #[test]
    fn longer_or_shorter_runs_are_not_links() {
        let a = hex(b"a");
        for content in [
            format!("{a}0"),
            format!("f{a}"),
            a[..63].to_owned(),
            format!("{a}{a}"),
        ] {
            let links = Links::of(content.as_bytes(), Digest::of(b"x"));
            assert!(links.targets.is_empty(), "{content}");
        }
        // Bounded by any non-hex byte, or by the content's ends.
        let links = Links::of(format!("{a}-{a}\n{a}").as_bytes(), Digest::of(b"x"));
        assert_eq!(links.targets, [Digest::of(b"a")]);
    }

    #[test]
    fn runs_spanning_pieces_are_found_as_in_one_piece() {
        let content = format!("x{}y{}", hex(b"a"), hex(b"b"));
        let whole = Links::of(content.as_bytes(), Digest::of(b"x"));
        for split in 0..content.len() {
            let mut scanner = LinkScanner::new();
            scanner.update(&content.as_bytes()[..split]);
            scanner.update(&content.as_bytes()[split..]);
            assert_eq!(scanner.finish(Digest::of(b"x")), whole, "split at {split}");
        }
    }

    /// The rule read byte by byte: every run of exactly 64 hex digits.
    fn every_run_of_64(content: &[u8]) -> BTreeSet<Digest> {
        content
            .split(|&byte| HEX_VALUES[usize::from(byte)] == NOT_HEX)
            .filter(|run| run.len() == REF_DIGITS)
            .map(|run| {
                let text = std::str::from_utf8(run).unwrap().to_ascii_lowercase();
                Digest(*blake3::Hash::from_hex(text).unwrap().as_bytes())
            })
            .collect()
    }

    #[test]
    fn skipping_through_content_in_pieces_finds_what_reading_every_byte_finds() {
        // Hex-heavy content with runs of every length around 64, fed whole
        // and in pieces of random lengths.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for case in 0..300 {
            let mut content = Vec::new();
            while content.len() < 2_000 {
                let run = (next() % 140) as usize;
                let digits = b"0123456789abcdefABCDEF";
                content.extend((0..run).map(|_| digits[(next() % 22) as usize]));
                content.push(b" -x\n"[(next() % 4) as usize]);
            }
            if case % 2 == 0 {
                content.pop(); // Ending inside a run.
            }
            let own = Digest::of(b"x");
            let expected: Vec<Digest> = every_run_of_64(&content).into_iter().collect();
            assert_eq!(Links::of(&content, own).targets, expected, "case {case}");
            let mut scanner = LinkScanner::new();
            let mut rest = &content[..];
            while !rest.is_empty() {
                let piece = ((next() % 200) as usize).min(rest.len());
                scanner.update(&rest[..piece]);
                rest = &rest[piece..];
            }
            assert_eq!(
                scanner.finish(own).targets,
                expected,
                "case {case} in pieces"
            );
        }
    }

    #[test]
    fn a_prefix_stands_for_every_object_it_begins_and_no_other() {
        let digest = |first: u8, last: u8| {
            let mut bytes = [first; 32];
            bytes[31] = last;
            Digest(bytes)
        };
        let (a1, a2, b) = (digest(1, 1), digest(1, 2), digest(2, 1));
        let mut sorted = vec![b, a2, a1];
        sorted.sort_unstable();
        assert_eq!(with_prefix(&sorted, &prefix_of(&a1)), &[a1, a2]);
        assert_eq!(with_prefix(&sorted, &prefix_of(&b)), &[b]);
        assert!(with_prefix(&sorted, &[3; PREFIX_BYTES]).is_empty());
        let column = targets_column(&[a1, b]);
        assert_eq!(column.len(), 2 * PREFIX_BYTES);
        let store = StoreId::parse("s").unwrap();
        assert_eq!(
            column_targets(&store, a1, &column).unwrap(),
            vec![prefix_of(&a1), prefix_of(&b)]
        );
        let damaged = column_targets(&store, a1, &column[1..]).unwrap_err();
        assert!(damaged.to_string().contains("store s"), "{damaged}");
    }

    #[test]
    fn a_self_reference_is_ignored() {
        let own = Digest::of(b"me");
        let links = Links::of(own.to_hex().as_bytes(), own);
        assert!(links.targets.is_empty());
    }

    #[test]
    fn past_the_limit_links_are_dropped_and_the_overflow_is_said() {
        let mut content = String::new();
        for i in 0..=MAX_LINKS_PER_OBJECT {
            content.push_str(&hex(&i.to_le_bytes()));
            content.push(' ');
        }
        let links = Links::of(content.as_bytes(), Digest::of(b"x"));
        assert_eq!(links.targets.len(), MAX_LINKS_PER_OBJECT);
        assert!(links.overflowed);
    }
}
