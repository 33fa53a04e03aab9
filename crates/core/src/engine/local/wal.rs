//! A check of the index's write-ahead log before SQLite reads it.
//!
//! SQLite ends its log at the first frame whose checksum fails: every
//! commit after it is dropped without a word, as if the process had
//! crashed there. That is right for a write torn by a crash (only the
//! last frames can be torn) and wrong for a byte flipped in the middle of
//! the log, which loses acknowledged commits. The two differ in what
//! follows the bad frame: frames of the same log generation (the same
//! salts) can only follow it if they were written after it, so their
//! commits are being dropped. A flip in the last commit has nothing after
//! it; for that, the writer records where the log ended after each of its
//! commits (`ChangeCounter::record_log_end`): a bad frame at or before
//! that end was acknowledged. This module reads the log as SQLite's file
//! format documents it and says when either happens.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

/// The log header's size.
const HEADER_BYTES: usize = 32;
/// A frame header's size; the page follows it.
const FRAME_HEADER_BYTES: usize = 24;
/// The two magic numbers: checksums over little- or big-endian words.
const MAGIC_LITTLE: u32 = 0x377f_0682;
const MAGIC_BIG: u32 = 0x377f_0683;

/// What is wrong with a log whose history SQLite would cut short.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct LogDamage {
    /// The first frame that fails its check (0 for the header).
    pub(crate) first_bad_frame: u64,
    /// Frames of the same log after it, which SQLite would drop.
    pub(crate) frames_dropped: u64,
    /// Of those, the ones that end a commit.
    pub(crate) commits_dropped: u64,
}

impl std::fmt::Display for LogDamage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.first_bad_frame == 0 {
            write!(f, "the log's header fails its checksum")?;
        } else {
            write!(
                f,
                "frame {} of the log fails its checksum",
                self.first_bad_frame
            )?;
        }
        write!(
            f,
            ", and SQLite would drop it with the {} frames of acknowledged commits after it \
             ({} commits end among them)",
            self.frames_dropped, self.commits_dropped
        )
    }
}

/// Where the log ended after the last commit known to be acknowledged:
/// the log generation's first salt and the commit's last frame (from 1).
pub(crate) type LogEnd = (u32, u64);

/// Checks the log at `path`, of which the frames through `acknowledged`
/// (when known) belong to acknowledged commits; `None` when it is absent,
/// empty, intact, or ends in frames torn by a crash that were never
/// acknowledged.
pub(crate) fn check(path: &Path, acknowledged: Option<LogEnd>) -> io::Result<Option<LogDamage>> {
    let mut bytes = Vec::new();
    match File::open(path) {
        Ok(mut file) => file.read_to_end(&mut bytes)?,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error),
    };
    Ok(check_bytes(&bytes, acknowledged))
}

fn check_bytes(bytes: &[u8], acknowledged: Option<LogEnd>) -> Option<LogDamage> {
    if bytes.len() < HEADER_BYTES {
        return None;
    }
    let word = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    let big_endian = match word(0) {
        MAGIC_LITTLE => false,
        MAGIC_BIG => true,
        // A flipped magic number: judged by the frames below.
        _ => word(0) & 0xffff_fff0 == MAGIC_LITTLE & 0xffff_fff0,
    };
    let page_size = match word(8) {
        1 => 65_536,
        size if size.is_power_of_two() && (512..=32_768).contains(&size) => size as usize,
        // No page size to find frames by: a damaged header would show in
        // the frames, but they cannot be told apart. SQLite ignores the log.
        _ => return None,
    };
    let salts = (word(16), word(20));
    let stored = (word(24), word(28));
    let header_ok = matches!(word(0), MAGIC_LITTLE | MAGIC_BIG)
        && checksum(big_endian, (0, 0), &bytes[..24]) == stored;
    let frame_bytes = FRAME_HEADER_BYTES + page_size;
    let frames = (bytes.len() - HEADER_BYTES) / frame_bytes;
    let frame = |index: usize| {
        let start = HEADER_BYTES + index * frame_bytes;
        &bytes[start..start + frame_bytes]
    };
    let frame_word =
        |frame: &[u8], at: usize| u32::from_be_bytes(frame[at..at + 4].try_into().expect("4"));
    // Frames of this log carry its salts; a commit frame names the
    // database's size after it.
    let of_this_log = |frame: &[u8]| (frame_word(frame, 8), frame_word(frame, 12)) == salts;
    let is_commit = |frame: &[u8]| frame_word(frame, 4) != 0;
    let follows = |from: usize| {
        let later: Vec<&[u8]> = (from..frames)
            .map(frame)
            .filter(|f| of_this_log(f))
            .collect();
        (
            later.len() as u64,
            later.iter().filter(|f| is_commit(f)).count() as u64,
        )
    };
    if !header_ok {
        // The first frame was written with the header: if it checks out
        // against the checksum the header stores, or carries its salts,
        // the header was damaged after it was written.
        if frames == 0 {
            return None;
        }
        let first = frame(0);
        let mut covered = first[..8].to_vec();
        covered.extend_from_slice(&first[FRAME_HEADER_BYTES..]);
        let first_checks = checksum(big_endian, stored, &covered)
            == (frame_word(first, 16), frame_word(first, 20));
        if !first_checks && !of_this_log(first) {
            return None;
        }
        let (frames_dropped, commits_dropped) = follows(0);
        return Some(LogDamage {
            first_bad_frame: 0,
            frames_dropped: frames_dropped.max(1),
            commits_dropped,
        });
    }
    // The last acknowledged frame of this generation, if known.
    let acknowledged_end = acknowledged
        .filter(|&(salt, _)| salt == salts.0)
        .map_or(0, |(_, frame)| frame);
    let mut running = stored;
    for index in 0..frames {
        let current = frame(index);
        let mut covered = current[..8].to_vec();
        covered.extend_from_slice(&current[FRAME_HEADER_BYTES..]);
        let expected = checksum(big_endian, running, &covered);
        let intact =
            of_this_log(current) && expected == (frame_word(current, 16), frame_word(current, 20));
        if intact {
            running = expected;
            continue;
        }
        let (frames_dropped, commits_dropped) = follows(index + 1);
        let position = index as u64 + 1;
        if frames_dropped == 0 && position > acknowledged_end {
            // The log ends here: a write torn by a crash, or older frames.
            return None;
        }
        // Frames of acknowledged commits from here on: those written
        // after it, or, for the last commit, those the writer recorded.
        let acknowledged_after = acknowledged_end.saturating_sub(position);
        return Some(LogDamage {
            first_bad_frame: position,
            frames_dropped: frames_dropped.max(acknowledged_after),
            commits_dropped: commits_dropped.max(1),
        });
    }
    // Every frame checks out, but the log is shorter than what was
    // acknowledged: its end was cut off.
    if (frames as u64) < acknowledged_end {
        return Some(LogDamage {
            first_bad_frame: frames as u64 + 1,
            frames_dropped: acknowledged_end - frames as u64 - 1,
            commits_dropped: 1,
        });
    }
    None
}

/// SQLite's log checksum over `data` (a multiple of 8 bytes), continuing
/// from `seed`.
fn checksum(big_endian: bool, seed: (u32, u32), data: &[u8]) -> (u32, u32) {
    let (mut s0, mut s1) = seed;
    for pair in data.chunks_exact(8) {
        let read = |b: &[u8]| {
            let b: [u8; 4] = b.try_into().expect("4 bytes");
            if big_endian {
                u32::from_be_bytes(b)
            } else {
                u32::from_le_bytes(b)
            }
        };
        s0 = s0.wrapping_add(read(&pair[..4])).wrapping_add(s1);
        s1 = s1.wrapping_add(read(&pair[4..])).wrapping_add(s0);
    }
    (s0, s1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A log of `frames` frames of 512-byte pages, every third a commit,
    /// written as SQLite writes one.
    fn log(frames: usize) -> Vec<u8> {
        let salts = (0x1234_5678u32, 0x9abc_def0u32);
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&MAGIC_LITTLE.to_be_bytes());
        bytes.extend_from_slice(&3_007_000u32.to_be_bytes());
        bytes.extend_from_slice(&512u32.to_be_bytes());
        bytes.extend_from_slice(&0u32.to_be_bytes());
        bytes.extend_from_slice(&salts.0.to_be_bytes());
        bytes.extend_from_slice(&salts.1.to_be_bytes());
        let header_sum = checksum(false, (0, 0), &bytes);
        bytes.extend_from_slice(&header_sum.0.to_be_bytes());
        bytes.extend_from_slice(&header_sum.1.to_be_bytes());
        let mut running = header_sum;
        for index in 0..frames {
            let mut head = Vec::new();
            head.extend_from_slice(&(index as u32 + 1).to_be_bytes());
            let commit = if index % 3 == 2 { 10 } else { 0 };
            head.extend_from_slice(&(commit as u32).to_be_bytes());
            let page: Vec<u8> = (0..512).map(|i| (i * 7 + index) as u8).collect();
            let mut covered = head.clone();
            covered.extend_from_slice(&page);
            running = checksum(false, running, &covered);
            head.extend_from_slice(&salts.0.to_be_bytes());
            head.extend_from_slice(&salts.1.to_be_bytes());
            head.extend_from_slice(&running.0.to_be_bytes());
            head.extend_from_slice(&running.1.to_be_bytes());
            bytes.extend_from_slice(&head);
            bytes.extend_from_slice(&page);
        }
        bytes
    }

    const FRAME: usize = FRAME_HEADER_BYTES + 512;

    #[test]
    fn an_intact_or_torn_log_is_not_damage() {
        let intact = log(9);
        assert_eq!(check_bytes(&intact, None), None);
        // A crash tore the last frame: nothing follows it.
        let mut torn = intact.clone();
        let last = torn.len() - 100;
        torn[last] ^= 0xff;
        assert_eq!(check_bytes(&torn, None), None);
        torn.truncate(torn.len() - 300);
        assert_eq!(check_bytes(&torn, None), None);
        assert_eq!(check_bytes(&[], None), None);
    }

    #[test]
    fn a_flipped_byte_before_the_end_is_damage_naming_what_is_dropped() {
        let mut flipped = log(9);
        // A byte of the page of frame 4 (frames count from 1).
        flipped[HEADER_BYTES + 3 * FRAME + 100] ^= 0x01;
        let damage = check_bytes(&flipped, None).unwrap();
        assert_eq!(damage.first_bad_frame, 4);
        assert_eq!(damage.frames_dropped, 5);
        // Frames 6 and 9 end commits.
        assert_eq!(damage.commits_dropped, 2);
        // A flip in a frame's header is caught the same way.
        let mut flipped = log(9);
        flipped[HEADER_BYTES + FRAME + 2] ^= 0x80;
        assert_eq!(check_bytes(&flipped, None).unwrap().first_bad_frame, 2);
    }

    #[test]
    fn a_flip_in_the_last_acknowledged_commit_is_damage_but_a_torn_unacknowledged_one_is_not() {
        let salt = 0x1234_5678;
        // Frames 1 to 9, commits ending at 3, 6 and 9.
        let mut flipped = log(9);
        flipped[HEADER_BYTES + 8 * FRAME + 100] ^= 0x01;
        // The writer recorded the log's end after the commit at frame 9:
        // the flip loses an acknowledged commit.
        let damage = check_bytes(&flipped, Some((salt, 9))).unwrap();
        assert_eq!(damage.first_bad_frame, 9);
        // Recorded after the commit at frame 6 only: frames 7 to 9 were a
        // commit in flight when the writer died, torn, never acknowledged.
        assert_eq!(check_bytes(&flipped, Some((salt, 6))), None);
        // A record of another log generation says nothing of this one.
        assert_eq!(check_bytes(&flipped, Some((salt + 1, 9))), None);
        // A log cut short of what was acknowledged.
        let mut cut = log(9);
        cut.truncate(HEADER_BYTES + 6 * FRAME);
        assert_eq!(
            check_bytes(&cut, Some((salt, 9))).unwrap().first_bad_frame,
            7
        );
        assert_eq!(check_bytes(&cut, Some((salt, 6))), None);
    }

    #[test]
    fn a_flipped_byte_anywhere_in_the_header_is_damage() {
        for at in 0..HEADER_BYTES {
            // A page size changed to another valid one cannot be told
            // from another log; every other byte is caught.
            if (8..12).contains(&at) {
                continue;
            }
            let mut flipped = log(6);
            flipped[at] ^= 0x04;
            let damage = check_bytes(&flipped, None);
            assert!(
                damage.as_ref().is_some_and(|d| d.first_bad_frame == 0),
                "byte {at}: {damage:?}"
            );
        }
    }

    #[test]
    fn frames_of_an_older_log_after_the_end_are_not_damage() {
        // The log was restarted: new frames over the first ones, with new
        // salts; older frames remain beyond them.
        let old = log(9);
        let mut restarted = old.clone();
        restarted[16] ^= 0xff; // new salt 1 ...
        let header_sum = checksum(false, (0, 0), &restarted[..24]);
        restarted[24..28].copy_from_slice(&header_sum.0.to_be_bytes());
        restarted[28..32].copy_from_slice(&header_sum.1.to_be_bytes());
        // ... and no frame of the new log yet: every frame is older.
        assert_eq!(check_bytes(&restarted, None), None);
    }
}
