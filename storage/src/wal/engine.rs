//! The WAL writer's I/O back ends behind one trait: io_uring and portable pwrite + fdatasync.
//!
//! An engine owns the writer's aligned write buffer (so the io_uring engine can register it with
//! the kernel for the lifetime of the ring) and writes a prefix of it at a file offset. Durability
//! is the syncer's (see `writer`): it runs fdatasync on its own thread while the engine writes
//! the next groups.
//!
//! - **io_uring** (`IoEngine::Uring`): the ring belongs to the writer thread; segments are opened
//!   with O_DIRECT and the buffer is registered, so a write (`WRITE_FIXED`) goes from the buffer
//!   to the device without a copy into the page cache.
//! - **portable** (`IoEngine::Sync`): buffered `pwrite` and `fdatasync`, for kernels or sandboxes
//!   that refuse io_uring (Docker's default seccomp profile, `kernel.io_uring_disabled`) or file
//!   systems without O_DIRECT.
//!
//! `IoEngine::Auto` probes io_uring and O_DIRECT at start and falls back to the portable engine
//! with one log line saying why.
//!
//! Every error an engine returns is final for the writer: after a failed write the file's
//! content is unknown, and after a failed fdatasync the kernel may have dropped dirty pages.

use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::str::FromStr;

use io_uring::{opcode, squeue, types, IoUring, Probe};

use crate::error::{Error, IoContext, Result};
use crate::fs::{self, AlignedBuf, DIRECT_ALIGN};

/// Which I/O engine the writer uses (`--wal.io-engine`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IoEngine {
    /// io_uring where the kernel allows it, else the portable engine.
    #[default]
    Auto,
    /// io_uring with O_DIRECT; opening the WAL fails where it is unavailable.
    Uring,
    /// Buffered pwrite + fdatasync.
    Sync,
}

impl FromStr for IoEngine {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<IoEngine, String> {
        match s {
            "auto" => Ok(IoEngine::Auto),
            "uring" | "io_uring" => Ok(IoEngine::Uring),
            "sync" | "portable" => Ok(IoEngine::Sync),
            _ => Err(format!(
                "unknown io engine {s:?}; expected auto, uring or sync"
            )),
        }
    }
}

impl fmt::Display for IoEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IoEngine::Auto => "auto",
            IoEngine::Uring => "uring",
            IoEngine::Sync => "sync",
        })
    }
}

pub(crate) trait Engine: Send {
    fn name(&self) -> &'static str;

    /// Whether segment files must be opened with O_DIRECT for this engine.
    fn direct(&self) -> bool;

    fn buffer(&self) -> &AlignedBuf;

    fn buffer_mut(&mut self) -> &mut AlignedBuf;

    /// Writes `buffer[..len]` at `offset` of `file`. For O_DIRECT engines `offset` and `len` are
    /// multiples of `DIRECT_ALIGN`.
    fn write(&mut self, file: &File, path: &Path, offset: u64, len: usize) -> Result<()>;

    /// fdatasync of `file`.
    fn sync(&mut self, file: &File, path: &Path) -> Result<()>;
}

/// Creates the engine `choice` asks for, with a write buffer of `buffer_bytes`, checking that
/// it works in `dir`. Returns the engine and, for `Auto` falling back, the reason.
pub(crate) fn create(
    choice: IoEngine,
    buffer_bytes: usize,
    dir: &Path,
) -> Result<(Box<dyn Engine>, Option<String>)> {
    let uring = || -> std::result::Result<Box<dyn Engine>, String> {
        probe_direct(dir)?;
        let engine = UringEngine::new(AlignedBuf::zeroed(buffer_bytes))
            .map_err(|e| format!("io_uring is unavailable: {e}"))?;
        Ok(Box::new(engine))
    };
    match choice {
        IoEngine::Sync => Ok((
            Box::new(SyncEngine {
                buf: AlignedBuf::zeroed(buffer_bytes),
            }),
            None,
        )),
        IoEngine::Uring => uring().map(|engine| (engine, None)).map_err(Error::Config),
        IoEngine::Auto => match uring() {
            Ok(engine) => Ok((engine, None)),
            Err(reason) => {
                let engine = SyncEngine {
                    buf: AlignedBuf::zeroed(buffer_bytes),
                };
                Ok((Box::new(engine), Some(reason)))
            }
        },
    }
}

/// Checks that files in `dir` can be opened with O_DIRECT (tmpfs before Linux 6.6 cannot).
fn probe_direct(dir: &Path) -> std::result::Result<(), String> {
    let path = dir.join("direct-probe.tmp");
    let _ = std::fs::remove_file(&path);
    let result = (|| {
        drop(fs::create_new(&path)?);
        drop(fs::open_rw(&path, true)?);
        Ok::<_, Error>(())
    })();
    let _ = std::fs::remove_file(&path);
    result.map_err(|e| format!("O_DIRECT is unavailable in {}: {e}", dir.display()))
}

/// Buffered pwrite + fdatasync.
struct SyncEngine {
    buf: AlignedBuf,
}

impl Engine for SyncEngine {
    fn name(&self) -> &'static str {
        "sync"
    }

    fn direct(&self) -> bool {
        false
    }

    fn buffer(&self) -> &AlignedBuf {
        &self.buf
    }

    fn buffer_mut(&mut self) -> &mut AlignedBuf {
        &mut self.buf
    }

    fn write(&mut self, file: &File, path: &Path, offset: u64, len: usize) -> Result<()> {
        fs::write_all_at(file, path, &self.buf.as_slice()[..len], offset)
    }

    fn sync(&mut self, file: &File, path: &Path) -> Result<()> {
        fs::fdatasync(file, path)
    }
}

/// io_uring with one registered buffer; a write and its fdatasync are linked.
struct UringEngine {
    ring: IoUring,
    // Declared after `ring`, so the ring (and its registration) is dropped first.
    buf: AlignedBuf,
}

const USER_DATA_WRITE: u64 = 1;
const USER_DATA_SYNC: u64 = 2;

impl UringEngine {
    fn new(buf: AlignedBuf) -> io::Result<UringEngine> {
        let ring = IoUring::new(8)?;
        let mut probe = Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        for (code, name) in [
            (opcode::WriteFixed::CODE, "WRITE_FIXED"),
            (opcode::Fsync::CODE, "FSYNC"),
        ] {
            if !probe.is_supported(code) {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("{name} not supported"),
                ));
            }
        }
        let iovec = libc::iovec {
            iov_base: buf.as_ptr() as *mut libc::c_void,
            iov_len: buf.capacity(),
        };
        // SAFETY: the buffer stays allocated and in place for as long as the ring exists: both
        // are owned by this struct and the ring is dropped first (field order).
        unsafe { ring.submitter().register_buffers(&[iovec])? };
        Ok(UringEngine { ring, buf })
    }

    /// Submits `entries` and waits for all their completions, returning their results by
    /// user data.
    fn run(&mut self, entries: &[squeue::Entry]) -> io::Result<[Option<i32>; 3]> {
        {
            let mut sq = self.ring.submission();
            for entry in entries {
                // SAFETY: the entries reference the registered buffer (alive, see `new`) and a
                // descriptor the caller keeps open until this function returns.
                unsafe { sq.push(entry) }.map_err(|_| io::Error::other("submission queue full"))?;
            }
        }
        let mut results = [None; 3];
        let mut seen = 0;
        while seen < entries.len() {
            match self.ring.submit_and_wait(entries.len() - seen) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => return Err(e),
            }
            for cqe in self.ring.completion() {
                if let Some(slot) = results.get_mut(cqe.user_data() as usize) {
                    *slot = Some(cqe.result());
                    seen += 1;
                }
            }
        }
        Ok(results)
    }
}

impl Engine for UringEngine {
    fn name(&self) -> &'static str {
        "io_uring"
    }

    fn direct(&self) -> bool {
        true
    }

    fn buffer(&self) -> &AlignedBuf {
        &self.buf
    }

    fn buffer_mut(&mut self) -> &mut AlignedBuf {
        &mut self.buf
    }

    fn write(&mut self, file: &File, path: &Path, offset: u64, len: usize) -> Result<()> {
        assert!(offset % DIRECT_ALIGN as u64 == 0);
        assert!(len % DIRECT_ALIGN == 0);
        assert!(len <= self.buf.capacity());
        fail::fail_point!("wal::segment::write::err", |_| {
            Err(io::Error::from_raw_os_error(libc::EIO)).ctx("write", path)
        });
        let fd = types::Fd(file.as_raw_fd());
        let mut done = 0usize;
        while done < len {
            let write = opcode::WriteFixed::new(
                fd,
                // SAFETY (of the pointer arithmetic): `done < len <= capacity`.
                unsafe { self.buf.as_ptr().add(done) },
                (len - done) as u32,
                0,
            )
            .offset(offset + done as u64)
            .build()
            .user_data(USER_DATA_WRITE);
            let results = self.run(&[write]).ctx("io_uring submit", path)?;
            let written = results[USER_DATA_WRITE as usize].unwrap_or(-libc::EIO);
            if written < 0 {
                return Err(io::Error::from_raw_os_error(-written)).ctx("write", path);
            }
            if written == 0 {
                return Err(io::Error::from(io::ErrorKind::WriteZero)).ctx("write", path);
            }
            // A short write: write the rest.
            done += written as usize;
        }
        Ok(())
    }

    fn sync(&mut self, file: &File, path: &Path) -> Result<()> {
        fail::fail_point!("wal::segment::sync::err", |_| {
            Err(io::Error::from_raw_os_error(libc::EIO)).ctx("fdatasync", path)
        });
        let fsync = opcode::Fsync::new(types::Fd(file.as_raw_fd()))
            .flags(types::FsyncFlags::DATASYNC)
            .build()
            .user_data(USER_DATA_SYNC);
        let results = self.run(&[fsync]).ctx("io_uring submit", path)?;
        let synced = results[USER_DATA_SYNC as usize].unwrap_or(-libc::EIO);
        if synced < 0 {
            return Err(io::Error::from_raw_os_error(-synced)).ctx("fdatasync", path);
        }
        Ok(())
    }
}
