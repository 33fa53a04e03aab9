//! The BLAKE3 tree of large content, kept beside it as an outboard, so
//! that a range read verifies only the 16 KiB groups it touches.
//!
//! BLAKE3 hashes 1 KiB chunks and combines them up a binary tree whose
//! root is the content's digest. An outboard stores the pair of child
//! hashes of every tree node above the 16 KiB groups, in post order
//! (the `bao-tree` crate's `PostOrderOutboard` format, without a size
//! suffix: the size is in the index). That is 64 bytes per 16 KiB, 0.4%.
//! A read walks down from the digest to the groups it wants, checking each
//! pair against its parent, then hashes only those groups.
//!
//! [`TreeHasher`] computes the digest and the outboard in one pass over a
//! stream of unknown length; [`read_verified`] is the reading side. Tree
//! geometry (which nodes a range needs, where each pair sits) is
//! `bao-tree`'s; hashing is BLAKE3's own subtree API.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::ops::Range;
use std::sync::{Arc, Mutex};

use bao_tree::iter::BaoChunk;
use bao_tree::{BaoTree, BlockSize, ChunkNum, ChunkRanges};
use blake3::hazmat::{
    ChainingValue, HasherExt, Mode, merge_subtrees_non_root, merge_subtrees_root,
};

use crate::names::Digest;

/// Chunk groups of 2^4 BLAKE3 chunks: 16 KiB.
const GROUP_CHUNK_LOG: u8 = 4;

/// The bytes in one chunk group: the unit a range read hashes.
pub(crate) const GROUP_BYTES: usize = 1024 << GROUP_CHUNK_LOG;

/// The size of the outboard of `size` bytes of content.
pub(crate) fn outboard_len(size: u64) -> u64 {
    tree(size).outboard_size()
}

fn tree(size: u64) -> BaoTree {
    BaoTree::new(size, BlockSize::from_chunk_log(GROUP_CHUNK_LOG))
}

/// Bytes that can be read at any offset: an object's file or its outboard,
/// or bytes already in memory.
pub(crate) trait RandomAccess: Send + Sync {
    /// The bytes at `offset..offset + len` in place, for sources already in
    /// memory (saves a copy); `None` for sources that must be read.
    fn slice(&self, _offset: u64, _len: usize) -> Option<&[u8]> {
        None
    }

    /// Fills `buf` from `offset`, failing if fewer bytes are there. Sources
    /// in memory need only [`RandomAccess::slice`].
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let bytes = self
            .slice(offset, buf.len())
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(bytes);
        Ok(())
    }
}

impl RandomAccess for std::fs::File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }
}

impl RandomAccess for Vec<u8> {
    fn slice(&self, offset: u64, len: usize) -> Option<&[u8]> {
        let start = usize::try_from(offset).ok()?;
        self.get(start..start.checked_add(len)?)
    }
}

/// An outboard read from a file, with its most recently used 4 KiB blocks
/// kept for every read of one reader. Windows of a long read need the
/// same few pairs above them (the tree's upper levels, at the outboard's
/// end in post order): kept, a window costs one or two block reads of the
/// outboard instead of about eight.
pub(crate) struct CachedBlocks {
    inner: Box<dyn RandomAccess>,
    /// The outboard's length: where its last (short) block ends.
    len: u64,
    /// Blocks by their start, least recently used first.
    blocks: Mutex<VecDeque<(u64, Arc<[u8]>)>>,
}

impl CachedBlocks {
    const BLOCK: u64 = 4096;
    /// 64 KiB of pairs. With the least recently used block dropped first,
    /// 16 blocks are enough for a read front to back to fetch each block
    /// of the outboard once (simulated for 1 GiB: 1,024 reads, the outboard's size in
    /// blocks; 8 blocks take 4,167).
    const KEPT: usize = 16;

    /// `inner` holds the outboard of content of `size` bytes.
    pub(crate) fn new(inner: Box<dyn RandomAccess>, size: u64) -> Self {
        Self {
            inner,
            len: outboard_len(size),
            blocks: Mutex::default(),
        }
    }

    /// The block starting at `start`, read if it is not kept; either way
    /// it becomes the most recently used.
    fn block(&self, start: u64) -> io::Result<Arc<[u8]>> {
        let used = |blocks: &mut VecDeque<(u64, Arc<[u8]>)>| {
            let at = blocks.iter().position(|(at, _)| *at == start)?;
            let kept = blocks.remove(at)?;
            let block = Arc::clone(&kept.1);
            blocks.push_back(kept);
            Some(block)
        };
        if let Some(block) = used(&mut self.blocks.lock().unwrap_or_else(|e| e.into_inner())) {
            return Ok(block);
        }
        let mut block = vec![0u8; (self.len - start).min(Self::BLOCK) as usize];
        self.inner.read_exact_at(&mut block, start)?;
        let block: Arc<[u8]> = block.into();
        let mut blocks = self.blocks.lock().unwrap_or_else(|e| e.into_inner());
        if used(&mut blocks).is_none() {
            if blocks.len() == Self::KEPT {
                blocks.pop_front();
            }
            blocks.push_back((start, Arc::clone(&block)));
        }
        Ok(block)
    }
}

impl RandomAccess for CachedBlocks {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|end| *end <= self.len)
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        let mut at = offset;
        while at < end {
            let start = at - at % Self::BLOCK;
            let block = self.block(start)?;
            let from = (at - start) as usize;
            let take = (block.len() - from).min((end - at) as usize);
            let filled = (at - offset) as usize;
            buf[filled..filled + take].copy_from_slice(&block[from..from + take]);
            at += take as u64;
        }
        Ok(())
    }
}

/// Hashes content of unknown length as it streams past, writing the
/// outboard's hash pairs to `outboard` as the tree's nodes complete (post
/// order is the order in which they complete). Memory stays at one group
/// plus one hash per tree level.
pub(crate) struct TreeHasher<W> {
    /// The current group's bytes; a full group is hashed only once more
    /// content arrives, since the last group of a one-group tree is the root.
    group: Vec<u8>,
    /// Groups hashed so far.
    groups: u64,
    /// Hashes of complete subtrees not yet merged, largest first.
    stack: Vec<ChainingValue>,
    outboard: W,
}

impl<W: Write> TreeHasher<W> {
    /// A hasher writing the outboard to `outboard`.
    pub(crate) fn new(outboard: W) -> Self {
        Self {
            group: Vec::with_capacity(GROUP_BYTES),
            groups: 0,
            stack: Vec::new(),
            outboard,
        }
    }

    /// The outboard written so far (for a `Vec`, to drain it as it grows).
    pub(crate) fn outboard_mut(&mut self) -> &mut W {
        &mut self.outboard
    }

    /// Adds the next bytes of the content.
    pub(crate) fn update(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            if self.group.len() == GROUP_BYTES {
                let group = std::mem::take(&mut self.group);
                self.push_group(&group)?;
                self.group = group;
                self.group.clear();
            }
            if self.group.is_empty() && bytes.len() > GROUP_BYTES {
                // A whole group with more to come: hash it in place.
                let (group, rest) = bytes.split_at(GROUP_BYTES);
                self.push_group(group)?;
                bytes = rest;
                continue;
            }
            let take = (GROUP_BYTES - self.group.len()).min(bytes.len());
            self.group.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
        }
        Ok(())
    }

    /// The content's digest; the outboard is complete once this returns.
    pub(crate) fn finish(mut self) -> io::Result<(Digest, W)> {
        if self.groups == 0 {
            let digest = Digest(*blake3::hash(&self.group).as_bytes());
            return Ok((digest, self.outboard));
        }
        let last = std::mem::take(&mut self.group);
        self.push_group(&last)?;
        while self.stack.len() > 2 {
            self.merge_top()?;
        }
        let right = self.stack.pop().expect("two groups or more");
        let left = self.stack.pop().expect("two groups or more");
        self.write_pair(&left, &right)?;
        let root = merge_subtrees_root(&left, &right, Mode::Hash);
        Ok((Digest(*root.as_bytes()), self.outboard))
    }

    fn push_group(&mut self, group: &[u8]) -> io::Result<()> {
        // Merge the subtrees the groups so far complete: as many stay on
        // the stack as the group count has bits set (BLAKE3's own scheme).
        while self.stack.len() > self.groups.count_ones() as usize {
            self.merge_top()?;
        }
        let offset = self.groups * GROUP_BYTES as u64;
        let hash = blake3::Hasher::new()
            .set_input_offset(offset)
            .update(group)
            .finalize_non_root();
        self.stack.push(hash);
        self.groups += 1;
        Ok(())
    }

    fn merge_top(&mut self) -> io::Result<()> {
        let right = self.stack.pop().expect("merging needs two subtrees");
        let left = self.stack.pop().expect("merging needs two subtrees");
        self.write_pair(&left, &right)?;
        self.stack
            .push(merge_subtrees_non_root(&left, &right, Mode::Hash));
        Ok(())
    }

    fn write_pair(&mut self, left: &ChainingValue, right: &ChainingValue) -> io::Result<()> {
        self.outboard.write_all(left)?;
        self.outboard.write_all(right)
    }
}

/// Why a verified read stopped.
#[derive(Debug)]
pub(crate) enum ReadFault {
    /// A group or a hash pair on the way to it does not match: the
    /// content or its outboard is damaged.
    Mismatch,
    /// Reading the content or the outboard failed.
    Io(io::Error),
}

impl From<io::Error> for ReadFault {
    fn from(error: io::Error) -> Self {
        Self::Io(error)
    }
}

/// Reads `range` of content of `size` bytes whose digest is `digest`,
/// checking every byte against the digest through the outboard's hash
/// pairs. `emit` gets each verified piece, in order, with its offset; no
/// byte of a group is emitted before the whole group has been checked.
/// The range must lie within the content. The outboard is read one pair
/// (64 bytes) at a time: one in a file belongs in a [`CachedBlocks`].
pub(crate) fn read_verified(
    digest: Digest,
    size: u64,
    data: &dyn RandomAccess,
    outboard: &dyn RandomAccess,
    range: Range<u64>,
    emit: &mut dyn FnMut(u64, &[u8]) -> io::Result<()>,
) -> Result<(), ReadFault> {
    debug_assert!(range.start <= range.end && range.end <= size);
    let tree = tree(size);
    // Whole groups, so that every leaf is checked with one subtree hash.
    let group = GROUP_BYTES as u64;
    let first = range.start / group * (group / 1024);
    let end = range.end.div_ceil(group) * (group / 1024);
    let chunks = ChunkRanges::from(ChunkNum(first)..ChunkNum(end.max(first + 1)));
    let mut expected: Vec<[u8; 32]> = vec![digest.0];
    // Only for sources read piece by piece.
    let mut buffer = Vec::new();
    let mut pair = [0u8; 64];
    for item in tree.ranges_pre_order_chunks_iter_ref(&chunks, 0) {
        match item {
            BaoChunk::Parent {
                node,
                is_root,
                left,
                right,
                ..
            } => {
                let at = tree
                    .post_order_offset(node)
                    .expect("parents above the groups are in the outboard")
                    .value();
                outboard.read_exact_at(&mut pair, at * 64)?;
                let (left_hash, right_hash) = pair.split_at(32);
                let left_hash: ChainingValue = left_hash.try_into().expect("32 bytes");
                let right_hash: ChainingValue = right_hash.try_into().expect("32 bytes");
                let actual = if is_root {
                    *merge_subtrees_root(&left_hash, &right_hash, Mode::Hash).as_bytes()
                } else {
                    merge_subtrees_non_root(&left_hash, &right_hash, Mode::Hash)
                };
                if Some(actual) != expected.pop() {
                    return Err(ReadFault::Mismatch);
                }
                if right {
                    expected.push(right_hash);
                }
                if left {
                    expected.push(left_hash);
                }
            }
            BaoChunk::Leaf {
                start_chunk,
                size: length,
                is_root,
                ..
            } => {
                let offset = start_chunk.to_bytes();
                let bytes = match data.slice(offset, length) {
                    Some(bytes) => bytes,
                    None => {
                        buffer.resize(GROUP_BYTES, 0);
                        data.read_exact_at(&mut buffer[..length], offset)?;
                        &buffer[..length]
                    }
                };
                let actual = if is_root {
                    *blake3::hash(bytes).as_bytes()
                } else {
                    blake3::Hasher::new()
                        .set_input_offset(offset)
                        .update(bytes)
                        .finalize_non_root()
                };
                if Some(actual) != expected.pop() {
                    return Err(ReadFault::Mismatch);
                }
                let from = range.start.max(offset);
                let to = range.end.min(offset + length as u64);
                if from < to {
                    let piece = &bytes[(from - offset) as usize..(to - offset) as usize];
                    emit(from, piece)?;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bao_tree::io::outboard::PostOrderMemOutboard;

    fn content(size: usize) -> Vec<u8> {
        (0..size).map(|i| (i * 7 + i / 1000) as u8).collect()
    }

    fn hashed(bytes: &[u8], pieces: usize) -> (Digest, Vec<u8>) {
        let mut hasher = TreeHasher::new(Vec::new());
        for piece in bytes.chunks(pieces.max(1)) {
            hasher.update(piece).unwrap();
        }
        hasher.finish().unwrap()
    }

    #[test]
    fn digest_and_outboard_match_blake3_and_bao_tree_at_every_shape() {
        let sizes = [
            0,
            1,
            1024,
            GROUP_BYTES - 1,
            GROUP_BYTES,
            GROUP_BYTES + 1,
            2 * GROUP_BYTES,
            3 * GROUP_BYTES + 5,
            8 * GROUP_BYTES,
            13 * GROUP_BYTES - 7,
            300_000,
        ];
        for size in sizes {
            let bytes = content(size);
            let reference =
                PostOrderMemOutboard::create(&bytes, BlockSize::from_chunk_log(GROUP_CHUNK_LOG));
            for pieces in [1, 1000, GROUP_BYTES, GROUP_BYTES + 3, 1 << 20] {
                let (digest, outboard) = hashed(&bytes, pieces);
                assert_eq!(digest, Digest::of(&bytes), "size {size}, pieces {pieces}");
                assert_eq!(outboard, reference.data, "size {size}, pieces {pieces}");
                assert_eq!(outboard.len() as u64, outboard_len(size as u64));
            }
        }
    }

    fn read(bytes: &Vec<u8>, outboard: &Vec<u8>, range: Range<u64>) -> Result<Vec<u8>, ReadFault> {
        let digest = Digest::of(bytes);
        let mut out = Vec::new();
        let mut next = range.start;
        read_verified(
            digest,
            bytes.len() as u64,
            bytes,
            outboard,
            range,
            &mut |at, piece| {
                assert_eq!(at, next, "pieces arrive in order");
                next += piece.len() as u64;
                out.extend_from_slice(piece);
                Ok(())
            },
        )?;
        Ok(out)
    }

    #[test]
    fn ranges_read_back_exactly() {
        for size in [0, 100, GROUP_BYTES, 5 * GROUP_BYTES + 17, 300_000] {
            let bytes = content(size);
            let (_, outboard) = hashed(&bytes, 4096);
            let size = size as u64;
            let cuts = [
                0,
                1,
                4095,
                GROUP_BYTES as u64,
                size / 2,
                size.saturating_sub(1),
                size,
            ];
            for &start in &cuts {
                for &end in &cuts {
                    if start <= end && end <= size {
                        let got = read(&bytes, &outboard, start..end).unwrap();
                        assert_eq!(got, bytes[start as usize..end as usize]);
                    }
                }
            }
        }
    }

    #[test]
    fn a_flipped_byte_fails_only_the_ranges_over_it() {
        let bytes = content(40 * GROUP_BYTES);
        let (_, outboard) = hashed(&bytes, 1 << 16);
        let digest = Digest::of(&bytes);
        let mut damaged = bytes.clone();
        let bad = 20 * GROUP_BYTES + 100;
        damaged[bad] ^= 1;
        let run = |range: Range<u64>| {
            let mut emitted = Vec::new();
            let result = read_verified(
                digest,
                bytes.len() as u64,
                &damaged,
                &outboard,
                range,
                &mut |at, _| {
                    emitted.push(at);
                    Ok(())
                },
            );
            (result, emitted)
        };
        let (result, _) = run(bad as u64..bad as u64 + 1);
        assert!(matches!(result, Err(ReadFault::Mismatch)));
        assert!(run(0..GROUP_BYTES as u64 * 20).0.is_ok());
        assert!(run(GROUP_BYTES as u64 * 21..bytes.len() as u64).0.is_ok());
        let (whole, emitted) = run(0..bytes.len() as u64);
        assert!(whole.is_err());
        assert!(
            emitted.iter().all(|&at| at < 20 * GROUP_BYTES as u64),
            "nothing of the bad group or after it"
        );
    }

    #[test]
    fn a_damaged_outboard_is_a_mismatch() {
        let bytes = content(10 * GROUP_BYTES);
        let (_, mut outboard) = hashed(&bytes, 1 << 16);
        outboard[3] ^= 1;
        assert!(matches!(
            read(&bytes, &outboard, 0..10),
            Err(ReadFault::Mismatch)
        ));
    }

    /// Bytes read piece by piece, counting the reads that reach them.
    struct Counted(Vec<u8>, Arc<std::sync::atomic::AtomicUsize>);

    impl RandomAccess for Counted {
        fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
            self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.0.read_exact_at(buf, offset)
        }
    }

    #[test]
    fn a_cached_outboard_reads_as_its_file_does_and_fetches_each_block_once() {
        // 70 MiB: an outboard whose last block is short.
        let size = 70u64 << 20;
        let len = outboard_len(size);
        assert_ne!(len % CachedBlocks::BLOCK, 0);
        let outboard: Vec<u8> = (0..len).map(|i| (i * 31 + i / 4096) as u8).collect();
        let reads = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let cached = CachedBlocks::new(Box::new(Counted(outboard.clone(), reads.clone())), size);
        let spans = [
            (0, 64),
            (4032, 128),
            (len - 64, 64),
            (len - 5000, 5000),
            (8192, 4096),
        ];
        for _ in 0..3 {
            for (offset, want) in spans {
                let mut buf = vec![0u8; want];
                cached.read_exact_at(&mut buf, offset).unwrap();
                let offset = offset as usize;
                assert_eq!(buf, outboard[offset..offset + want], "{offset}+{want}");
            }
        }
        // Blocks 0, 1, 2 and the last two, each read once in three passes.
        assert_eq!(reads.load(std::sync::atomic::Ordering::Relaxed), 5);
        for (offset, want) in [(len - 63, 64), (len, 1), (u64::MAX - 10, 64)] {
            let mut buf = vec![0u8; want];
            let error = cached.read_exact_at(&mut buf, offset).unwrap_err();
            assert_eq!(
                error.kind(),
                io::ErrorKind::UnexpectedEof,
                "{offset}+{want}"
            );
        }
    }

    #[test]
    fn a_read_front_to_back_fetches_each_outboard_block_once() {
        // 64 MiB: an outboard of 64 blocks (the last one short), about
        // four times what is kept.
        let bytes = vec![7u8; 64 << 20];
        let (digest, outboard) = hashed(&bytes, 1 << 20);
        assert!(outboard.len() as u64 > 3 * CachedBlocks::KEPT as u64 * CachedBlocks::BLOCK);
        let reads = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let size = bytes.len() as u64;
        let cached = CachedBlocks::new(Box::new(Counted(outboard.clone(), reads.clone())), size);
        let window = 256 << 10;
        for start in (0..size).step_by(window) {
            let range = start..(start + window as u64).min(size);
            read_verified(digest, size, &bytes, &cached, range, &mut |_, _| Ok(())).unwrap();
        }
        let blocks = outboard.len().div_ceil(CachedBlocks::BLOCK as usize);
        assert_eq!(reads.load(std::sync::atomic::Ordering::Relaxed), blocks);
    }

    #[test]
    fn ranges_read_through_a_cached_outboard_are_verified_as_before() {
        let bytes = content(40 * GROUP_BYTES + 333);
        let (digest, outboard) = hashed(&bytes, 4096);
        let size = bytes.len() as u64;
        let reads = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let cached = CachedBlocks::new(Box::new(Counted(outboard.clone(), reads)), size);
        let group = GROUP_BYTES as u64;
        for range in [0..size, 3 * group + 5..17 * group, size - 10..size] {
            let mut out = Vec::new();
            read_verified(
                digest,
                size,
                &bytes,
                &cached,
                range.clone(),
                &mut |_, piece| {
                    out.extend_from_slice(piece);
                    Ok(())
                },
            )
            .unwrap();
            assert_eq!(out, bytes[range.start as usize..range.end as usize]);
        }
        // A pair flipped in the file is still caught through the cache.
        let mut damaged = outboard.clone();
        damaged[70] ^= 1;
        let cached = CachedBlocks::new(Box::new(damaged), size);
        let result = read_verified(digest, size, &bytes, &cached, 0..size, &mut |_, _| Ok(()));
        assert!(matches!(result, Err(ReadFault::Mismatch)));
    }
}
