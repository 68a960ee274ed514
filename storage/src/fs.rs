//! The thin file layer under the WAL: aligned buffers, memory maps, preallocation, syncing,
//! directory locking, and the fault-injection points the fault tests switch on.
//!
//! Every system call the WAL makes on a file goes through here, so a `failpoints` build can make
//! any of them fail (`wal::segment::sync::err`, `wal::segment::preallocate::enospc`, ...). Apart
//! from the io_uring engine, this is the only module with `unsafe`.

use std::alloc::{self, Layout};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::ptr::NonNull;

use bytes::Bytes;

use crate::error::{IoContext, Result};

/// Alignment of O_DIRECT buffers, file offsets and lengths. 4 KiB covers every logical block size
/// in use (512 B and 4 KiB sectors).
pub const DIRECT_ALIGN: usize = 4096;

/// A zero-initialised heap buffer aligned to `DIRECT_ALIGN`, usable for O_DIRECT I/O.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    capacity: usize,
}

// SAFETY: `AlignedBuf` owns its allocation exclusively, like a `Vec<u8>`.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared references only allow reads of the owned bytes.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// A buffer of `capacity` bytes (rounded up to `DIRECT_ALIGN`), all zero.
    pub fn zeroed(capacity: usize) -> AlignedBuf {
        let capacity = capacity.max(DIRECT_ALIGN).next_multiple_of(DIRECT_ALIGN);
        let layout = Self::layout(capacity);
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(raw) else {
            alloc::handle_alloc_error(layout)
        };
        AlignedBuf { ptr, capacity }
    }

    fn layout(capacity: usize) -> Layout {
        Layout::from_size_align(capacity, DIRECT_ALIGN).expect("aligned buffer layout")
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` points to `capacity` initialised bytes owned by `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.capacity) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.capacity) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `zeroed` with this same layout.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), Self::layout(self.capacity)) }
    }
}

/// Opens an existing file for reading and writing, with O_DIRECT if `direct`.
pub fn open_rw(path: &Path, direct: bool) -> Result<File> {
    let mut options = OpenOptions::new();
    options.read(true).write(true);
    if direct {
        options.custom_flags(libc::O_DIRECT);
    }
    options
        .open(path)
        .ctx(if direct { "open (O_DIRECT)" } else { "open" }, path)
}

/// Creates a new file, failing if it exists.
pub fn create_new(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .ctx("create", path)
}

/// Reserves `len` bytes of disk for `file`, so that writes inside them cannot fail with ENOSPC.
pub fn preallocate(file: &File, path: &Path, len: u64) -> Result<()> {
    fail::fail_point!("wal::segment::preallocate::enospc", |_| {
        Err(io::Error::from_raw_os_error(libc::ENOSPC)).ctx("preallocate", path)
    });
    let len = i64::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput));
    let len = len.ctx("preallocate", path)?;
    loop {
        // SAFETY: plain system call on an open descriptor.
        let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            // File systems without fallocate: extend the file; zero-filling reserves the space.
            Some(libc::EOPNOTSUPP) => return file.set_len(len as u64).ctx("extend", path),
            _ => return Err(err).ctx("preallocate", path),
        }
    }
}

/// Writes zeros over `0..len` of `file` and syncs them, so that later appends overwrite
/// initialised blocks: an fdatasync after writing into preallocated but uninitialised extents
/// must also commit the extent conversion, which takes about twice as long on ext4 here. The
/// buffer is aligned and `len` must be a multiple of `DIRECT_ALIGN`, so `file` may be O_DIRECT.
pub fn zero_fill(file: &File, path: &Path, len: u64) -> Result<()> {
    assert!(len % DIRECT_ALIGN as u64 == 0);
    const CHUNK: usize = 1 << 20;
    let zeros = AlignedBuf::zeroed(CHUNK);
    let mut offset = 0u64;
    while offset < len {
        let n = (len - offset).min(CHUNK as u64) as usize;
        file.write_all_at(&zeros.as_slice()[..n], offset)
            .ctx("zero-fill", path)?;
        offset += n as u64;
    }
    fdatasync(file, path)
}

/// Cuts or extends `file` to `len` bytes.
pub fn truncate(file: &File, path: &Path, len: u64) -> Result<()> {
    fail::fail_point!("wal::segment::truncate::err", |_| {
        Err(io::Error::from_raw_os_error(libc::EIO)).ctx("truncate", path)
    });
    file.set_len(len).ctx("truncate", path)
}

/// `pwrite` of all of `buf` at `offset`.
pub fn write_all_at(file: &File, path: &Path, buf: &[u8], offset: u64) -> Result<()> {
    fail::fail_point!("wal::segment::write::err", |_| {
        Err(io::Error::from_raw_os_error(libc::EIO)).ctx("write", path)
    });
    file.write_all_at(buf, offset).ctx("write", path)
}

/// `pread` of exactly `buf.len()` bytes at `offset`.
pub fn read_exact_at(file: &File, path: &Path, buf: &mut [u8], offset: u64) -> Result<()> {
    file.read_exact_at(buf, offset).ctx("read", path)
}

/// Makes the data of `file` durable. A failure here is final for the caller: after a failed
/// fdatasync the kernel may have dropped the dirty pages, so retrying could report success for
/// data that is gone.
pub fn fdatasync(file: &File, path: &Path) -> Result<()> {
    fail::fail_point!("wal::segment::sync::err", |_| {
        Err(io::Error::from_raw_os_error(libc::EIO)).ctx("fdatasync", path)
    });
    file.sync_data().ctx("fdatasync", path)
}

/// Makes data and metadata (the size, after a truncate) of `file` durable.
pub fn fsync(file: &File, path: &Path) -> Result<()> {
    fail::fail_point!("wal::segment::sync::err", |_| {
        Err(io::Error::from_raw_os_error(libc::EIO)).ctx("fsync", path)
    });
    file.sync_all().ctx("fsync", path)
}

/// Makes the entries of directory `dir` (files created, renamed or removed) durable.
pub fn fsync_dir(dir: &Path) -> Result<()> {
    fail::fail_point!("wal::dir::sync::err", |_| {
        Err(io::Error::from_raw_os_error(libc::EIO)).ctx("fsync directory", dir)
    });
    File::open(dir)
        .ctx("open directory", dir)?
        .sync_all()
        .ctx("fsync directory", dir)
}

/// What the kernel may map around a fault in a file mapping: the 64 KiB fault-around
/// window, or a whole large folio of the page cache (up to 2 MiB, the PMD size). A sequential
/// reader hands a mapping back from there, pages before its first block included, and a block
/// read on its own hands back the window around it (`Block::release_pages`): a follower that
/// caught up 10 GB kept 64–448 KiB before the first block read in the sealed mapping of a dozen
/// segments, each run starting at a multiple of 512 KiB (Linux 6.18, ext4, 8 MiB readahead).
/// Another reader's pages there are only mapped again from the page cache.
pub const MAPPED_AROUND: u64 = 2 << 20;

/// A whole read-only shared mapping of a file, made by `map`: readers hand out slices of it as
/// `Bytes` without copying, and hand back the pages they have read past (`release`). The mapping
/// lives as long as any clone or slice of it.
#[derive(Clone)]
pub struct FileMap(Bytes);

impl std::fmt::Debug for FileMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FileMap({} bytes)", self.0.len())
    }
}

impl std::ops::Deref for FileMap {
    type Target = Bytes;

    fn deref(&self) -> &Bytes {
        &self.0
    }
}

impl FileMap {
    /// `release` from `from` to the end of the file, its partial last page included.
    pub fn release_from(&self, from: u64) {
        self.release(from, u64::MAX);
    }

    /// Drops this process's page-table entries for the whole pages inside bytes `from..to`, so
    /// that a reader that has moved past them stops counting them in its resident set; `to` at
    /// or past the end takes the file's partial last page too (the mapping covers it whole). The
    /// pages stay in the kernel's page cache, and a later read of them (a slice still held,
    /// another reader) faults them back in with the same bytes. Best effort: a refusal changes
    /// nothing but the resident set.
    pub fn release(&self, from: u64, to: u64) {
        // SAFETY: sysconf only reads a value.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        let page = u64::try_from(page).unwrap_or(4096).max(1);
        let len = self.0.len() as u64;
        let start = from - from % page;
        let end = if to >= len {
            len.div_ceil(page) * page
        } else {
            to - to % page
        };
        if start >= len || end <= start {
            return;
        }
        // SAFETY: `self.0` is a whole mapping made by `map` (the only constructor), so the
        // pointer is page-aligned, `start` is inside it, and `start..end` lies within its pages
        // (the kernel maps the partial last page whole). The mapping is a read-only
        // shared mapping of a file: MADV_DONTNEED only unmaps its pages from this process, and
        // any later access maps them again from the file, whose bytes the WAL never changes
        // below what it published. No Rust reference sees different bytes afterwards.
        let rc = unsafe {
            libc::madvise(
                self.0.as_ptr().add(start as usize) as *mut libc::c_void,
                (end - start) as usize,
                libc::MADV_DONTNEED,
            )
        };
        if rc != 0 {
            tracing::debug!(
                "madvise(MADV_DONTNEED) of {} mapped bytes failed: {}",
                end - start,
                io::Error::last_os_error()
            );
        }
    }
}

/// Maps `len` bytes of `file` read-only, so that readers hand out slices of the file without
/// copying.
///
/// Only bytes inside the file may ever be read through the mapping: the WAL reads only up to
/// the durable end of a segment, which never lies past the end of the file.
pub fn map(file: &File, path: &Path, len: u64) -> Result<FileMap> {
    if len == 0 {
        return Ok(FileMap(Bytes::new()));
    }
    let len = usize::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput));
    let len = len.ctx("mmap", path)?;
    // SAFETY: the mapping is read-only; the WAL never truncates a file below bytes a reader may
    // still read (sealing only cuts the unused preallocated tail), and bytes are only read up
    // to the durable end the writer published after writing them.
    let map = unsafe { memmap2::MmapOptions::new().len(len).map(file) }.ctx("mmap", path)?;
    Ok(FileMap(Bytes::from_owner(map)))
}

/// Sets the nice value of the calling thread (on Linux, nice values are per thread). Lowering
/// it needs root or CAP_SYS_NICE; the caller decides what a refusal means.
pub fn set_thread_nice(nice: i32) -> io::Result<()> {
    // SAFETY: plain system call; `who` 0 is the calling thread.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sets the calling thread's nice value, best effort: a refusal is logged, and the thread runs
/// at the priority it has. 0 leaves the thread as it is.
pub fn set_thread_nice_or_say(nice: i32) {
    if nice == 0 {
        return;
    }
    if let Err(e) = set_thread_nice(nice) {
        tracing::info!(
            "could not set the nice value of the {} thread to {nice} ({e}); it runs at normal \
             priority (raising it needs root or CAP_SYS_NICE)",
            std::thread::current().name().unwrap_or("unnamed")
        );
    }
}

/// An exclusive advisory lock on a file, held until dropped, so that two processes never write
/// the same WAL.
pub struct DirLock {
    _file: File,
}

impl DirLock {
    pub fn acquire(path: &Path) -> Result<DirLock> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .ctx("open lock file", path)?;
        // SAFETY: plain system call on an open descriptor.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = io::Error::last_os_error();
            let err = if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                io::Error::new(io::ErrorKind::WouldBlock, "locked by another process")
            } else {
                err
            };
            return Err(err).ctx("lock", path);
        }
        Ok(DirLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: aligned buffers really are aligned and zeroed, for O_DIRECT.
    #[test]
    fn aligned_buffer_is_aligned_and_zero() {
        let buf = AlignedBuf::zeroed(10_000);
        assert_eq!(buf.as_ptr() as usize % DIRECT_ALIGN, 0);
        assert_eq!(buf.capacity(), 12_288);
        assert!(buf.as_slice().iter().all(|&b| b == 0));
    }

    // Goal: a second lock on the same file is refused while the first is held.
    #[test]
    fn dir_lock_is_exclusive() -> Result<()> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("LOCK");
        let lock = DirLock::acquire(&path)?;
        assert!(DirLock::acquire(&path).is_err());
        drop(lock);
        DirLock::acquire(&path)?;
        Ok(())
    }
}
