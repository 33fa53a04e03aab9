//! Room kept aside so that freeing space still works on a full disk.
//!
//! Removing a label or an object writes to the index before anything is
//! freed (the write-ahead log grows first), so on a full disk the very
//! commands that would free space would fail too. A local root therefore
//! keeps `space.reserve`, a file of [`crate::Options::space_reserve`] bytes
//! allocated up front. A change that only frees space and finds the disk
//! full gives the file up and is tried again (see `LocalEngine::apply`).
//! The file is made again when the root is next opened, or by the process
//! that gave it up as soon as its later freeing changes leave twice its
//! size free, so that making it never takes the room a freeing change
//! just made.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// The reserve file's name, in the root directory.
const FILE: &str = "space.reserve";

/// A root's reserve of disk space.
#[derive(Debug)]
pub(crate) struct SpaceReserve {
    path: PathBuf,
    size: u64,
    /// Set when this process gave the reserve up and has not made it again.
    given_up: AtomicBool,
}

impl SpaceReserve {
    /// The reserve of the root at `root`, made now if it is missing or
    /// short and the disk has room for it twice over.
    pub(crate) fn open(root: &Path, size: u64) -> Self {
        let reserve = Self {
            path: root.join(FILE),
            size,
            given_up: AtomicBool::new(false),
        };
        reserve.fill();
        reserve
    }

    /// Gives the reserve up, so that a freeing change can use its room.
    /// Returns whether any room was freed (`false`: none is kept, or
    /// another process gave it up first).
    pub(crate) fn give_up(&self) -> bool {
        let freed = std::fs::remove_file(&self.path).is_ok();
        if freed {
            self.given_up.store(true, Ordering::Release);
            tracing::warn!(path = %self.path.display(), "disk full: gave up the space reserve to free space");
        }
        freed
    }

    /// Whether this process gave the reserve up and has not made it again.
    pub(crate) fn is_given_up(&self) -> bool {
        self.given_up.load(Ordering::Acquire)
    }

    /// After a freeing change: makes the reserve again if this process
    /// gave it up and there is now room.
    pub(crate) fn refill_if_given_up(&self) {
        if self.is_given_up() && self.fill() {
            self.given_up.store(false, Ordering::Release);
        }
    }

    /// Makes the reserve file whole; returns whether it now is.
    fn fill(&self) -> bool {
        if self.size == 0 {
            return true;
        }
        if std::fs::metadata(&self.path).is_ok_and(|meta| meta.len() >= self.size) {
            return true;
        }
        if free_bytes(&self.path).is_none_or(|free| free < self.size.saturating_mul(2)) {
            return false;
        }
        let allocated = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&self.path)
            .and_then(|file| allocate(&file, self.size));
        if allocated.is_err() {
            let _ = std::fs::remove_file(&self.path);
        }
        allocated.is_ok()
    }
}

/// Bytes an unprivileged writer may still use on the filesystem holding
/// `path`'s directory.
fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let dir = path.parent()?;
    let name = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut stats = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `name` is a valid C string and `stats` is written before use.
    let stats = unsafe {
        if libc::statvfs(name.as_ptr(), stats.as_mut_ptr()) != 0 {
            return None;
        }
        stats.assume_init()
    };
    Some(stats.f_bavail.saturating_mul(stats.f_frsize))
}

/// Allocates `size` bytes of real blocks to `file` (not a sparse hole,
/// which would free nothing when deleted).
fn allocate(file: &std::fs::File, size: u64) -> std::io::Result<()> {
    let size = libc::off_t::try_from(size).map_err(std::io::Error::other)?;
    // SAFETY: the descriptor is open for writing for the call's duration.
    let result = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, size) };
    match result {
        0 => Ok(()),
        errno => Err(std::io::Error::from_raw_os_error(errno)),
    }
}

#[cfg(test)]
mod tests {
    use super::SpaceReserve;

    #[test]
    fn the_reserve_is_made_given_up_and_made_again() {
        let dir = tempfile::tempdir().unwrap();
        let reserve = SpaceReserve::open(dir.path(), 1 << 20);
        let path = dir.path().join(super::FILE);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 1 << 20);
        assert!(reserve.give_up());
        assert!(!path.exists());
        assert!(!reserve.give_up(), "nothing is left to give up");
        reserve.refill_if_given_up();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 1 << 20);
    }

    #[test]
    fn a_zero_reserve_keeps_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let reserve = SpaceReserve::open(dir.path(), 0);
        assert!(!dir.path().join(super::FILE).exists());
        assert!(!reserve.give_up());
    }
}
