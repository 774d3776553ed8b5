//! A compressed initramfs, unpacked on the host into the plain cpio
//! archive(s) the kernel would have unpacked in the guest.
//!
//! The kernel reads an initramfs as a run of segments (`unpack_to_rootfs`
//! in `init/initramfs.c`): plain "newc" cpio archives, zero padding, and
//! compressed streams, each of which holds more cpio archives. A
//! distribution's initrd is often a plain archive (early microcode) then
//! a compressed one. [`unpack`] keeps the plain archives as they are,
//! replaces each compressed stream with what it holds, and keeps every
//! segment on a 4-byte boundary, as the kernel's reader wants: the kernel
//! then only copies files out of the result. An initramfs that holds
//! anything else (a compressed ramdisk image, LZ4, trailing garbage) is
//! not unpacked: it boots as given, and the kernel deals with it.

use super::unpack::{unpack_stream, Compression};

/// The two "newc" magics (without and with checksums).
const NEWC: [&[u8]; 2] = [b"070701", b"070702"];
/// The size of a "newc" header.
const HEADER: usize = 110;
/// The name of the entry that ends an archive.
const TRAILER: &[u8] = b"TRAILER!!!";

/// An initramfs, unpacked.
#[derive(Debug, PartialEq, Eq)]
pub struct Unpacked {
    /// The plain cpio archives, one after the other.
    pub cpio: Vec<u8>,
    /// The formats of the compressed streams it held, in order.
    pub formats: Vec<Compression>,
}

/// Why an initramfs is not unpacked on the host.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Skip {
    /// It holds no compressed stream: there is nothing to unpack.
    #[error("it is not compressed")]
    Plain,
    /// It holds something this reader does not unpack, or is corrupt.
    #[error("{0}")]
    Other(String),
}

fn hex_field(h: &[u8], at: usize) -> Option<usize> {
    let s = std::str::from_utf8(h.get(at..at + 8)?).ok()?;
    usize::from_str_radix(s, 16).ok()
}

fn align4(n: usize) -> Option<usize> {
    n.checked_add(3).map(|n| n & !3)
}

fn is_newc(data: &[u8]) -> bool {
    NEWC.iter().any(|m| data.starts_with(m))
}

/// The length of the cpio archive at the start of `data`, through its
/// trailer entry and that entry's padding.
pub fn archive_len(data: &[u8]) -> Result<usize, String> {
    let mut at = 0;
    loop {
        let h = data
            .get(at..at + HEADER)
            .filter(|h| is_newc(h))
            .ok_or_else(|| format!("no cpio header at byte {at}"))?;
        let bad = || format!("a corrupt cpio header at byte {at}");
        let file_size = hex_field(h, 54).ok_or_else(bad)?;
        let name_size = hex_field(h, 94).ok_or_else(bad)?;
        let name_end = at.checked_add(HEADER + name_size).ok_or_else(bad)?;
        let name = data
            .get(at + HEADER..name_end)
            .ok_or_else(|| format!("a cpio name past the end, at byte {at}"))?;
        let data_start = align4(name_end).ok_or_else(bad)?;
        let end = data_start
            .checked_add(file_size)
            .and_then(align4)
            .ok_or_else(bad)?;
        if end > data.len().next_multiple_of(4) {
            return Err(format!("a cpio entry past the end, at byte {at}"));
        }
        at = end;
        if name.strip_suffix(b"\0") == Some(TRAILER) {
            return Ok(at.min(data.len()));
        }
    }
}

/// Checks that `data`, what a compressed stream held, is cpio archives and
/// zero padding and nothing else, each archive whole and on a 4-byte
/// boundary: the kernel stops at anything else ("junk within compressed
/// archive", "broken padding"), so passing it on would hand the guest
/// something its kernel would not have unpacked.
fn check_archives(data: &[u8]) -> Result<(), String> {
    if !is_newc(data) {
        return Err("holds no cpio archive (a ramdisk image?)".into());
    }
    let mut at = 0;
    while at < data.len() {
        if data[at] == 0 {
            at += data[at..].iter().take_while(|&&b| b == 0).count();
            continue;
        }
        if !is_newc(&data[at..]) || at % 4 != 0 {
            return Err(format!("holds junk at byte {at} of what it unpacks to"));
        }
        at += archive_len(&data[at..]).map_err(|e| format!("holds {e}"))?;
    }
    Ok(())
}

/// Unpacks `image`, refusing to make more than `max` bytes.
pub fn unpack(image: &[u8], max: u64) -> Result<Unpacked, Skip> {
    let mut cpio = Vec::new();
    let mut formats = Vec::new();
    let mut at = 0;
    while at < image.len() {
        let rest = &image[at..];
        if rest[0] == 0 {
            // Padding between segments.
            at += rest.iter().take_while(|&&b| b == 0).count();
            continue;
        }
        if is_newc(rest) {
            let n = archive_len(rest).map_err(Skip::Other)?;
            cpio.extend_from_slice(&rest[..n]);
            at += n;
        } else {
            let format = Compression::detect(rest).ok_or_else(|| {
                Skip::Other(format!(
                    "byte {at} starts neither a cpio archive nor a known compressed stream"
                ))
            })?;
            let start = cpio.len();
            let stream =
                |e: String| Skip::Other(format!("its {} stream at byte {at}: {e}", format.name()));
            let used = unpack_stream(format, rest, &mut cpio, max).map_err(stream)?;
            check_archives(&cpio[start..]).map_err(stream)?;
            formats.push(format);
            at += used.max(1);
        }
        if cpio.len() as u64 > max {
            return Err(Skip::Other(format!("it unpacks to more than {max} bytes")));
        }
        cpio.resize(cpio.len().next_multiple_of(4), 0);
    }
    if formats.is_empty() {
        return Err(Skip::Plain);
    }
    Ok(Unpacked { cpio, formats })
}

#[cfg(test)]
pub(crate) mod tests;
