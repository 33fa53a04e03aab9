//! Where a memory or log root keeps its big maps. A table of 2 MiB or
//! more gets its own mapping starting on a 2 MiB boundary, and the
//! kernel is asked to back it with huge pages (`MADV_HUGEPAGE`, honoured
//! when transparent huge pages are in `madvise` or `always` mode). With
//! 4 KiB pages, finding one label among a million also walked the page
//! table on every memory read it made; a million labels' table spans a
//! few dozen huge pages, which the TLB holds. The mapping is not rounded
//! up to whole huge pages: its last part, short of one, stays in small
//! pages, so a table just past a boundary costs no more memory than
//! before. Smaller tables come from the global allocator as usual.

use std::alloc::Layout;
use std::hash::RandomState;
use std::ptr::NonNull;

use allocator_api2::alloc::{AllocError, Allocator, Global};

/// A hash map whose table is backed by huge pages once it is big. It
/// hashes with std's keyed SipHash, as `std::collections::HashMap` does,
/// because its keys (label names) come from guests.
pub(super) type BigMap<K, V> = hashbrown::HashMap<K, V, RandomState, HugePages>;

/// The size of a huge page on the platforms this runs on (x86-64 and
/// aarch64 with 4 KiB base pages).
const HUGE_PAGE: usize = 2 << 20;

/// The allocator of [`BigMap`]'s tables.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct HugePages;

/// The mapping a layout gets: its size in whole pages, or `None` for one
/// small enough for the global allocator.
fn mapped_size(layout: Layout) -> Option<usize> {
    (layout.size() >= HUGE_PAGE && layout.align() <= HUGE_PAGE)
        .then(|| layout.size().next_multiple_of(page_size()))
}

/// The size of the system's pages.
fn page_size() -> usize {
    // SAFETY: `sysconf` only reads a system setting.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).unwrap_or(4096)
}

// SAFETY: every block handed out is either the global allocator's, given
// back to it with the same layout, or a private anonymous mapping of
// `mapped_size(layout)` bytes starting on a huge page boundary (so
// aligned for any layout that reaches it), unmapped whole with the same
// size. Blocks are never shared between calls, and copying `HugePages`
// shares no state.
unsafe impl Allocator for HugePages {
    fn allocate(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        let Some(size) = mapped_size(layout) else {
            return Global.allocate(layout);
        };
        // Map one huge page more than needed, then give back the ends
        // that fall outside the aligned block (both whole pages, as the
        // mapping's start, the boundary and `size` are).
        let reserved = size + HUGE_PAGE;
        // SAFETY: a fresh private anonymous mapping touches no memory of
        // ours.
        let start = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                reserved,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if start == libc::MAP_FAILED {
            return Err(AllocError);
        }
        let lead = (start as usize).next_multiple_of(HUGE_PAGE) - start as usize;
        let trail = reserved - lead - size;
        // SAFETY: both ranges lie inside the mapping just made and outside
        // the block handed out; the advice only concerns that block.
        unsafe {
            let block = start.cast::<u8>().add(lead);
            if lead > 0 {
                libc::munmap(start, lead);
            }
            if trail > 0 {
                libc::munmap(block.add(size).cast(), trail);
            }
            // Advice the kernel cannot follow (huge pages switched off)
            // leaves ordinary pages: nothing to report.
            libc::madvise(block.cast(), size, libc::MADV_HUGEPAGE);
            let block = NonNull::new(block).ok_or(AllocError)?;
            Ok(NonNull::slice_from_raw_parts(block, size))
        }
    }

    unsafe fn deallocate(&self, block: NonNull<u8>, layout: Layout) {
        match mapped_size(layout) {
            // SAFETY: the caller gives back a block this allocator handed
            // out for `layout`, which came from the global allocator.
            None => unsafe { Global.deallocate(block, layout) },
            // SAFETY: the block is a mapping of exactly `size` bytes made
            // by `allocate` for this layout, and no longer used.
            Some(size) => unsafe {
                libc::munmap(block.as_ptr().cast(), size);
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A map grown well past a huge page keeps every entry through its
    /// table's moves to bigger mappings and back to a smaller one.
    #[test]
    fn a_big_map_keeps_its_entries_on_aligned_huge_pages() {
        let mut map: BigMap<u64, [u64; 4]> = BigMap::default();
        for key in 0..200_000u64 {
            map.insert(key, [key; 4]);
        }
        assert!(map.allocation_size() >= HUGE_PAGE);
        for key in (0..200_000u64).step_by(997) {
            assert_eq!(map.get(&key), Some(&[key; 4]));
        }
        map.retain(|key, _| key % 2 == 0);
        map.shrink_to_fit();
        assert_eq!(map.len(), 100_000);
        assert_eq!(map.get(&4), Some(&[4; 4]));
        assert_eq!(map.get(&5), None);
    }

    #[test]
    fn a_block_starts_on_a_huge_page_and_ends_at_the_next_page() {
        let layout = Layout::from_size_align(HUGE_PAGE + 1, 64).unwrap();
        let block = HugePages.allocate(layout).unwrap();
        assert_eq!(block.len(), HUGE_PAGE + page_size());
        let start = block.cast::<u8>();
        assert_eq!(start.as_ptr() as usize % HUGE_PAGE, 0);
        // SAFETY: the block is ours, writable and `block.len()` long.
        unsafe {
            start.as_ptr().write_bytes(0xa5, block.len());
            assert_eq!(*start.as_ptr().add(block.len() - 1), 0xa5);
            HugePages.deallocate(start, layout);
        }
    }
}
