//! A writer for the "newc" cpio format that the Linux kernel unpacks as an
//! initramfs. Writing it ourselves (rather than running `cpio -o`) lets the
//! lab create device nodes and root-owned files without being root, and keeps
//! the archives reproducible (every mtime is 0).

use std::collections::BTreeSet;

/// File type bits of `st_mode`.
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

/// An in-memory newc archive. Parent directories are added automatically
/// (mode 0755) the first time a path below them is added.
#[derive(Debug, Default)]
pub struct Cpio {
    buf: Vec<u8>,
    next_ino: u32,
    dirs: BTreeSet<String>,
}

fn normalize(path: &str) -> String {
    path.trim_start_matches('/')
        .trim_end_matches('/')
        .to_string()
}

impl Cpio {
    /// An empty archive.
    pub fn new() -> Self {
        Cpio {
            buf: Vec::new(),
            next_ino: 1,
            dirs: BTreeSet::new(),
        }
    }

    /// Adds a directory (and its parents) with mode 0755.
    pub fn dir(&mut self, path: &str) -> &mut Self {
        let path = normalize(path);
        if path.is_empty() || self.dirs.contains(&path) {
            return self;
        }
        self.parents(&path);
        self.dirs.insert(path.clone());
        self.entry(&path, S_IFDIR | 0o755, 2, (0, 0), &[]);
        self
    }

    /// Adds a regular file with the given permission bits (e.g. 0o755).
    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) -> &mut Self {
        let path = normalize(path);
        self.parents(&path);
        self.entry(&path, S_IFREG | (perm & 0o7777), 1, (0, 0), data);
        self
    }

    /// Adds a symbolic link at `path` pointing to `target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        let path = normalize(path);
        self.parents(&path);
        self.entry(&path, S_IFLNK | 0o777, 1, (0, 0), target.as_bytes());
        self
    }

    /// Adds a character device node.
    pub fn char_dev(&mut self, path: &str, perm: u32, major: u32, minor: u32) -> &mut Self {
        let path = normalize(path);
        self.parents(&path);
        self.entry(&path, S_IFCHR | (perm & 0o7777), 1, (major, minor), &[]);
        self
    }

    /// Appends the trailer and returns the archive bytes.
    pub fn finish(mut self) -> Vec<u8> {
        self.header("TRAILER!!!", 0, 0, 1, (0, 0), 0);
        // Pad the archive to a multiple of 512 bytes like cpio(1) does.
        while self.buf.len() % 512 != 0 {
            self.buf.push(0);
        }
        self.buf
    }

    fn parents(&mut self, path: &str) {
        if let Some((parent, _)) = path.rsplit_once('/') {
            let parent = parent.to_string();
            self.dir(&parent);
        }
    }

    fn entry(&mut self, name: &str, mode: u32, nlink: u32, rdev: (u32, u32), data: &[u8]) {
        let ino = self.next_ino;
        self.next_ino += 1;
        self.header(name, ino, mode, nlink, rdev, data.len());
        self.buf.extend_from_slice(data);
        self.pad4();
    }

    fn header(
        &mut self,
        name: &str,
        ino: u32,
        mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        size: usize,
    ) {
        let size = u32::try_from(size).expect("cpio entries are limited to 4 GiB");
        let fields = [
            ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime
            size,
            0, // devmajor
            0, // devminor
            rdev.0,
            rdev.1,
            name.len() as u32 + 1, // namesize, including the NUL
            0,                     // check
        ];
        self.buf.extend_from_slice(b"070701");
        for f in fields {
            self.buf.extend_from_slice(format!("{f:08X}").as_bytes());
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad4();
    }

    fn pad4(&mut self) {
        while self.buf.len() % 4 != 0 {
            self.buf.push(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (name, mode, rdev major, rdev minor, data) of every entry, trailer included.
    fn parse(mut b: &[u8]) -> Vec<(String, u32, u32, u32, Vec<u8>)> {
        let total = b.len();
        let mut out = Vec::new();
        loop {
            let off = total - b.len();
            assert_eq!(off % 4, 0);
            assert_eq!(&b[..6], b"070701");
            let field = |i: usize| {
                u32::from_str_radix(std::str::from_utf8(&b[6 + i * 8..14 + i * 8]).unwrap(), 16)
                    .unwrap()
            };
            let (mode, size, maj, min, namesize) =
                (field(1), field(6), field(9), field(10), field(11));
            let name_end = 110 + namesize as usize;
            let name = String::from_utf8(b[110..name_end - 1].to_vec()).unwrap();
            assert_eq!(b[name_end - 1], 0);
            let data_start = (off + name_end).div_ceil(4) * 4 - off;
            let data = b[data_start..data_start + size as usize].to_vec();
            let next = (off + data_start + size as usize).div_ceil(4) * 4 - off;
            b = &b[next..];
            let done = name == "TRAILER!!!";
            out.push((name, mode, maj, min, data));
            if done {
                assert!(b.iter().all(|&x| x == 0));
                return out;
            }
        }
    }

    #[test]
    fn newc_round_trip() {
        let mut c = Cpio::new();
        c.file("/bin/busybox", 0o755, b"ELF...")
            .symlink("bin/sh", "busybox")
            .char_dev("/dev/console", 0o600, 5, 1)
            .file("init", 0o755, b"#!/bin/sh\n")
            .dir("proc");
        let bytes = c.finish();
        assert_eq!(bytes.len() % 512, 0);
        let entries = parse(&bytes);
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "bin",
                "bin/busybox",
                "bin/sh",
                "dev",
                "dev/console",
                "init",
                "proc",
                "TRAILER!!!"
            ]
        );
        assert_eq!(entries[0].1, 0o040755);
        assert_eq!(entries[1].1, 0o100755);
        assert_eq!(entries[1].4, b"ELF...");
        assert_eq!(entries[2].1, 0o120777);
        assert_eq!(entries[2].4, b"busybox");
        assert_eq!((entries[4].1, entries[4].2, entries[4].3), (0o020600, 5, 1));
        assert_eq!(entries[5].4, b"#!/bin/sh\n");
    }
}
