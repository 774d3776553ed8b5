//! Opening the files a user names (kernel, initrd, symbols, snapshots,
//! config files): only regular files, checked on the open descriptor so no
//! path swap can slip past, never blocking on a FIFO, and bounded in size.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// What kind of thing a non-regular path is, for messages.
pub fn kind_name(ft: std::fs::FileType) -> &'static str {
    if ft.is_file() {
        "a regular file"
    } else if ft.is_dir() {
        "a directory"
    } else if ft.is_fifo() {
        "a named pipe (FIFO)"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else {
        "neither a file nor a directory"
    }
}

/// Opens `path` for reading if it is a regular file of at most `max` bytes;
/// returns it and its size. Opening does not block on a FIFO
/// (O_NONBLOCK), and the type is checked on the descriptor itself.
pub fn open_regular(path: &Path, max: u64) -> io::Result<(File, u64)> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("it is {}, not a regular file", kind_name(meta.file_type())),
        ));
    }
    if meta.len() > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "it is {} MiB; at most {} MiB is accepted",
                meta.len() >> 20,
                max >> 20
            ),
        ));
    }
    Ok((file, meta.len()))
}

/// Reads all of a regular file of at most `max` bytes.
pub fn read_regular(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    let (file, len) = open_regular(path, max)?;
    read_opened(file, len, max)
}

/// Reads all of `file`, which [`open_regular`] opened and found `len`
/// bytes long, failing if it has grown past `max` since.
pub fn read_opened(file: File, len: u64, max: u64) -> io::Result<Vec<u8>> {
    let mut data = Vec::with_capacity(len as usize);
    // The file may grow after the check: read no more than the bound.
    file.take(max + 1).read_to_end(&mut data)?;
    if data.len() as u64 > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("it grew past {} MiB while being read", max >> 20),
        ));
    }
    Ok(data)
}

/// A Unix socket this process bound; dropping it removes the socket file
/// if it is still the one this process made (same inode).
pub struct BoundSocket {
    path: std::path::PathBuf,
    ino: u64,
}

impl Drop for BoundSocket {
    fn drop(&mut self) {
        use std::os::unix::fs::MetadataExt;
        if std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.ino() == self.ino) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Binds a listening Unix socket at `path` for `flag` (named in errors).
/// An existing socket is replaced only when nothing answers on it (a stale
/// one from a process that died); a live one, or a path that is not a
/// socket, is refused and left alone.
pub fn bind_socket(
    path: &Path,
    flag: &str,
) -> io::Result<(std::os::unix::net::UnixListener, BoundSocket)> {
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::net::{UnixListener, UnixStream};
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{} exists and is {}, not a socket: choose another {flag} path",
                    path.display(),
                    kind_name(meta.file_type())
                ),
            ));
        }
        if UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!(
                    "{} is in use by a running process: stop it or choose another {flag} path",
                    path.display()
                ),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)
        .map_err(|e| io::Error::new(e.kind(), format!("binding {}: {e}", path.display())))?;
    let ino = std::fs::symlink_metadata(path)?.ino();
    Ok((
        listener,
        BoundSocket {
            path: path.to_path_buf(),
            ino,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("subzero-files-{}-{name}", std::process::id()));
        let _ = std::fs::remove_file(&p);
        p
    }

    #[test]
    fn a_fifo_is_refused_at_once() {
        let p = scratch("fifo");
        let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo reads the NUL-terminated path only.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let t = std::time::Instant::now();
        let e = open_regular(&p, 1 << 20).unwrap_err().to_string();
        assert!(
            t.elapsed() < std::time::Duration::from_secs(1),
            "it blocked"
        );
        assert!(e.contains("named pipe"), "{e}");
        let _ = std::fs::remove_file(&p);
    }

    #[test]
    fn devices_directories_and_large_files_are_refused() {
        let e = open_regular(Path::new("/dev/null"), 1 << 20).unwrap_err();
        assert!(e.to_string().contains("a character device"), "{e}");
        let e = open_regular(Path::new("/"), 1 << 20).unwrap_err();
        assert!(e.to_string().contains("directory"), "{e}");
        let p = scratch("big");
        std::fs::write(&p, vec![0u8; 3 << 20]).unwrap();
        let e = read_regular(&p, 2 << 20).unwrap_err();
        assert!(e.to_string().contains("at most 2 MiB"), "{e}");
        assert_eq!(read_regular(&p, 4 << 20).unwrap().len(), 3 << 20);
        let _ = std::fs::remove_file(&p);
    }
}
