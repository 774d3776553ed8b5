//! Opening a disk image: the checks that give each wrong path, file type,
//! permission or size its own message, and the lock that keeps two VMs
//! from writing one image.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::request::SECTOR_SIZE;

/// Why a disk image cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The file does not exist.
    #[error("disk image {}: no such file; check the path", .path.display())]
    NotFound {
        /// The image path.
        path: PathBuf,
    },
    /// The path names a directory.
    #[error("disk image {}: is a directory; give the path of a raw disk image file", .path.display())]
    IsDirectory {
        /// The image path.
        path: PathBuf,
    },
    /// The path names something other than a file or a block device.
    #[error("disk image {}: not a regular file or a block device", .path.display())]
    NotADisk {
        /// The image path.
        path: PathBuf,
    },
    /// The image may be read but not written.
    #[error("disk image {}: cannot be opened for writing ({reason}); attach it with readonly=on, or make it writable", .path.display())]
    WriteDenied {
        /// The image path.
        path: PathBuf,
        /// Why writing is not possible.
        reason: &'static str,
    },
    /// The image may not be read at all.
    #[error("disk image {}: permission denied; check the file's owner and permissions", .path.display())]
    PermissionDenied {
        /// The image path.
        path: PathBuf,
    },
    /// The image holds no data.
    #[error("disk image {}: the file is empty; give it a size first, e.g. `truncate -s 1G {}`", .path.display(), .path.display())]
    Empty {
        /// The image path.
        path: PathBuf,
    },
    /// The image is smaller than one sector.
    #[error("disk image {}: {size} bytes is smaller than one 512-byte sector", .path.display())]
    TooSmall {
        /// The image path.
        path: PathBuf,
        /// Its size in bytes.
        size: u64,
    },
    /// Another process holds a conflicting lock.
    #[error("disk image {}: locked by another user (another VM, or the same image given twice); two writers corrupt an image. Stop the other user, or attach the image with readonly=on everywhere", .path.display())]
    Locked {
        /// The image path.
        path: PathBuf,
    },
    /// The serial given is too long.
    #[error("disk image {}: id {id:?} is {} bytes; virtio-blk allows at most 20", .path.display(), .id.len())]
    IdTooLong {
        /// The image path.
        path: PathBuf,
        /// The id given.
        id: String,
    },
    /// `engine=uring` was asked for and the host refused io_uring.
    #[error("disk image {}: the io_uring engine is not available here ({source}); io_uring needs Linux 5.6 or later, kernel.io_uring_disabled=0 and a seccomp policy that allows it. Use engine=sync, or engine=auto to fall back by itself", .path.display())]
    UringUnavailable {
        /// The image path.
        path: PathBuf,
        /// Why the ring could not be set up.
        source: io::Error,
    },
    /// A queue count outside what the device serves.
    #[error("disk image {}: {queues} queues; give between 1 and {max}", .path.display())]
    Queues {
        /// The image path.
        path: PathBuf,
        /// The count asked for.
        queues: u16,
        /// The most the device serves.
        max: u16,
    },
    /// Any other failure of the host.
    #[error("disk image {}: {op}: {source}", .path.display())]
    Io {
        /// The image path.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The error.
        source: io::Error,
    },
}

/// Opens and locks the image at `path`; returns it with its size in bytes.
pub fn open_image(path: &Path, readonly: bool) -> Result<(File, u64), BlockError> {
    let p = || path.to_path_buf();
    // Look before opening: opening a FIFO would block until a writer comes.
    let mut flags = 0;
    if let Ok(meta) = std::fs::metadata(path) {
        check_kind(path, meta.file_type())?;
        // A host block device is ours alone while the VM runs: O_EXCL
        // fails if it is mounted or another process holds it so.
        if meta.file_type().is_block_device() {
            flags |= libc::O_EXCL;
        }
    }
    let file = OpenOptions::new()
        .read(true)
        .write(!readonly)
        .custom_flags(flags)
        .open(path)
        .map_err(|e| open_error(path, readonly, e))?;
    let io_err = |op| {
        move |source| BlockError::Io {
            path: p(),
            op,
            source,
        }
    };
    let meta = file.metadata().map_err(io_err("cannot stat"))?;
    let kind = meta.file_type();
    check_kind(path, kind)?;
    lock(&file, readonly).map_err(|e| {
        if e.kind() == io::ErrorKind::WouldBlock {
            BlockError::Locked { path: p() }
        } else {
            io_err("cannot lock")(e)
        }
    })?;
    let size = if kind.is_file() {
        meta.len()
    } else {
        (&file)
            .seek(SeekFrom::End(0))
            .map_err(io_err("cannot get the size"))?
    };
    if size == 0 {
        return Err(BlockError::Empty { path: p() });
    }
    if size < SECTOR_SIZE {
        return Err(BlockError::TooSmall { path: p(), size });
    }
    if size % SECTOR_SIZE != 0 {
        log::warn!(
            "disk image {}: {size} bytes is not a multiple of 512; the last {} bytes are not visible to the guest",
            path.display(),
            size % SECTOR_SIZE
        );
    }
    Ok((file, size))
}

/// The memory file system holding `file` (tmpfs, ramfs, hugetlbfs), if it
/// is on one: there is no storage to wait for, and reads and writes are
/// memory copies.
pub fn in_memory(file: &File) -> Option<&'static str> {
    const TMPFS: i64 = 0x0102_1994;
    const RAMFS: i64 = 0x8584_58f6_u32 as i64;
    const HUGETLBFS: i64 = 0x9584_58f6_u32 as i64;
    // SAFETY: statfs is plain data; fstatfs fills it for an open fd.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid statfs for the kernel to write.
    if unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) } != 0 {
        return None;
    }
    match st.f_type as i64 {
        TMPFS => Some("tmpfs"),
        RAMFS => Some("ramfs"),
        HUGETLBFS => Some("hugetlbfs"),
        _ => None,
    }
}

/// Accepts regular files and block devices.
fn check_kind(path: &Path, kind: std::fs::FileType) -> Result<(), BlockError> {
    if kind.is_dir() {
        Err(BlockError::IsDirectory {
            path: path.to_path_buf(),
        })
    } else if kind.is_file() || kind.is_block_device() {
        Ok(())
    } else {
        Err(BlockError::NotADisk {
            path: path.to_path_buf(),
        })
    }
}

/// Takes an advisory lock on the whole image without waiting: shared for
/// a read-only disk, exclusive otherwise.
fn lock(file: &File, readonly: bool) -> io::Result<()> {
    let op = if readonly {
        libc::LOCK_SH
    } else {
        libc::LOCK_EX
    };
    // SAFETY: flock only takes a descriptor, which `file` keeps open for
    // the duration of the call; it reads or writes no memory of ours.
    let r = unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Turns a failed open(2) into a message saying what to do.
fn open_error(path: &Path, readonly: bool, e: io::Error) -> BlockError {
    let path_buf = path.to_path_buf();
    match e.kind() {
        io::ErrorKind::NotFound => BlockError::NotFound { path: path_buf },
        io::ErrorKind::IsADirectory => BlockError::IsDirectory { path: path_buf },
        io::ErrorKind::ReadOnlyFilesystem if !readonly => BlockError::WriteDenied {
            path: path_buf,
            reason: "it is on a read-only file system",
        },
        io::ErrorKind::PermissionDenied => {
            if !readonly && File::open(path).is_ok() {
                BlockError::WriteDenied {
                    path: path_buf,
                    reason: "you may read it but not write it",
                }
            } else {
                BlockError::PermissionDenied { path: path_buf }
            }
        }
        _ => BlockError::Io {
            path: path_buf,
            op: "cannot open",
            source: e,
        },
    }
}
