//! A bzImage's compressed payload, unpacked on the host: the setup header
//! says where the payload is, its first bytes say how it is compressed,
//! and its last four bytes give the unpacked size (the kernel build
//! appends it for every format). The result is the ELF vmlinux that the
//! bzImage's own decompressor would have unpacked inside the guest.

use std::io::Read;

/// Largest vmlinux unpacked (a distribution kernel's is 50-70 MiB).
pub const MAX_VMLINUX: u64 = 1 << 30;
/// Oldest boot protocol with payload_offset and payload_length.
const PAYLOAD_PROTOCOL: u16 = 0x0208;

/// The compression formats a kernel build offers (CONFIG_KERNEL_*).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// gzip (RFC 1952).
    Gzip,
    /// bzip2.
    Bzip2,
    /// LZMA "alone" (.lzma).
    Lzma,
    /// xz, with the x86 BCJ filter.
    Xz,
    /// LZO (lzop); not unpacked here.
    Lzo,
    /// LZ4's legacy frame format.
    Lz4,
    /// Zstandard.
    Zstd,
}

impl Compression {
    /// The format's usual name.
    pub fn name(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip",
            Compression::Bzip2 => "bzip2",
            Compression::Lzma => "lzma",
            Compression::Xz => "xz",
            Compression::Lzo => "lzo",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }

    /// The format of `data`, from its magic bytes.
    pub fn detect(data: &[u8]) -> Option<Compression> {
        const MAGICS: &[(&[u8], Compression)] = &[
            (&[0x1f, 0x8b], Compression::Gzip),
            (b"BZh", Compression::Bzip2),
            (&[0x5d, 0x00, 0x00], Compression::Lzma),
            (&[0xfd, b'7', b'z', b'X', b'Z', 0x00], Compression::Xz),
            (&[0x89, b'L', b'Z', b'O'], Compression::Lzo),
            (&[0x02, 0x21, 0x4c, 0x18], Compression::Lz4),
            (&[0x28, 0xb5, 0x2f, 0xfd], Compression::Zstd),
        ];
        MAGICS
            .iter()
            .find(|(m, _)| data.starts_with(m))
            .map(|(_, c)| *c)
    }
}

/// Why a bzImage cannot be unpacked on the host (it then boots the
/// ordinary way).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UnpackError {
    /// No setup header, or one too old to locate the payload.
    #[error("{0}")]
    Header(String),
    /// The payload's format is unknown or not supported here.
    #[error("its payload is compressed with {0}, which Subzero does not unpack")]
    Unsupported(String),
    /// The payload is corrupt, or unpacks to something unexpected.
    #[error("its {format} payload {why}")]
    Corrupt {
        /// The format.
        format: &'static str,
        /// What went wrong.
        why: String,
    },
}

fn u16_at(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
}

/// The compressed payload of a bzImage, located by its setup header.
pub fn payload(image: &[u8]) -> Result<&[u8], UnpackError> {
    let bad = |s: &str| UnpackError::Header(s.to_string());
    if image.get(0x202..0x206) != Some(b"HdrS") {
        return Err(bad("no bzImage setup header"));
    }
    let version = u16_at(image, 0x206).ok_or_else(|| bad("truncated setup header"))?;
    if version < PAYLOAD_PROTOCOL {
        return Err(bad(
            "boot protocol older than 2.08 does not locate its payload",
        ));
    }
    let setup_sects = match image[0x1f1] {
        0 => 4,
        n => usize::from(n),
    };
    let pm_start = (setup_sects + 1) * 512;
    let offset = u32_at(image, 0x248).ok_or_else(|| bad("truncated setup header"))? as usize;
    let length = u32_at(image, 0x24c).ok_or_else(|| bad("truncated setup header"))? as usize;
    let start = pm_start
        .checked_add(offset)
        .ok_or_else(|| bad("payload offset overflows"))?;
    let end = start
        .checked_add(length)
        .ok_or_else(|| bad("payload length overflows"))?;
    image
        .get(start..end)
        .filter(|p| p.len() >= 8)
        .ok_or_else(|| bad("the payload lies outside the file"))
}

/// The unpacked size the kernel build appends to every payload (gzip's
/// own ISIZE is the same field).
pub fn unpacked_size(payload: &[u8]) -> u64 {
    payload
        .len()
        .checked_sub(4)
        .and_then(|at| u32_at(payload, at))
        .map_or(0, u64::from)
}

/// Unpacks a bzImage payload into its ELF vmlinux.
pub fn unpack(payload: &[u8]) -> Result<Vec<u8>, UnpackError> {
    let format = Compression::detect(payload).ok_or_else(|| {
        UnpackError::Unsupported(format!(
            "an unknown format (first bytes {:02x?})",
            &payload[..payload.len().min(6)]
        ))
    })?;
    let corrupt = |why: String| UnpackError::Corrupt {
        format: format.name(),
        why,
    };
    let size = unpacked_size(payload);
    if size == 0 || size > MAX_VMLINUX {
        return Err(corrupt(format!(
            "says it unpacks to {size} bytes; expected 1 to {MAX_VMLINUX}"
        )));
    }
    let out = match format {
        Compression::Gzip => read_all(flate2::read::GzDecoder::new(payload), size),
        Compression::Bzip2 => read_all(bzip2::read::BzDecoder::new(payload), size),
        Compression::Xz => read_all(liblzma::read::XzDecoder::new(payload), size),
        Compression::Lzma => {
            let stream = liblzma::stream::Stream::new_lzma_decoder(MAX_VMLINUX)
                .map_err(|e| corrupt(e.to_string()))?;
            read_all(liblzma::read::XzDecoder::new_stream(payload, stream), size)
        }
        Compression::Zstd => {
            let mut input = payload;
            let decoder = ruzstd::decoding::StreamingDecoder::new(&mut input)
                .map_err(|e| corrupt(e.to_string()))?;
            read_all(decoder, size)
        }
        Compression::Lz4 => lz4_legacy(payload, size as usize),
        Compression::Lzo => return Err(UnpackError::Unsupported("lzo".into())),
    }
    .map_err(corrupt)?;
    if out.len() as u64 != size {
        return Err(corrupt(format!(
            "unpacked to {} bytes, not the {size} it says",
            out.len()
        )));
    }
    if !out.starts_with(b"\x7fELF") {
        return Err(corrupt("did not unpack to an ELF vmlinux".into()));
    }
    Ok(out)
}

/// The most memory a decoder may use for one initramfs stream (an xz or
/// lzma dictionary); the kernel's own decoders allow far less.
const STREAM_MEMLIMIT: u64 = 256 << 20;

/// Unpacks the one compressed stream of `format` at the start of `input`
/// (an initramfs segment: more may follow it), appending what it holds to
/// `out`, which may not grow past `max` bytes. Returns how many bytes of
/// `input` the stream took, trailer included.
pub fn unpack_stream(
    format: Compression,
    input: &[u8],
    out: &mut Vec<u8>,
    max: u64,
) -> Result<usize, String> {
    let room = max.saturating_sub(out.len() as u64);
    let mut rest = input;
    match format {
        Compression::Gzip => read_capped(flate2::bufread::GzDecoder::new(&mut rest), out, room)?,
        Compression::Bzip2 => read_capped(bzip2::bufread::BzDecoder::new(&mut rest), out, room)?,
        Compression::Xz | Compression::Lzma => {
            let stream = if format == Compression::Xz {
                liblzma::stream::Stream::new_stream_decoder(STREAM_MEMLIMIT, 0)
            } else {
                liblzma::stream::Stream::new_lzma_decoder(STREAM_MEMLIMIT)
            }
            .map_err(|e| e.to_string())?;
            let decoder = liblzma::bufread::XzDecoder::new_stream(&mut rest, stream);
            read_capped(decoder, out, room)?
        }
        Compression::Zstd => {
            let mut decoder =
                ruzstd::decoding::StreamingDecoder::new(&mut rest).map_err(|e| e.to_string())?;
            read_capped(&mut decoder, out, room)?;
            // ruzstd reads a frame's checksum but leaves the check to us.
            let sums = (
                decoder.decoder.get_checksum_from_data(),
                decoder.decoder.get_calculated_checksum(),
            );
            if let (Some(stored), Some(computed)) = sums {
                if stored != computed {
                    return Err(format!(
                        "has checksum {stored:#010x}, but its data sums to {computed:#010x}"
                    ));
                }
            }
        }
        // LZ4's legacy frame does not say where it ends.
        Compression::Lz4 | Compression::Lzo => {
            return Err(format!("{} is not unpacked on the host", format.name()))
        }
    }
    Ok(input.len() - rest.len())
}

/// Reads `r` to its end onto `out`, refusing more than `room` bytes.
fn read_capped(r: impl Read, out: &mut Vec<u8>, room: u64) -> Result<(), String> {
    let before = out.len();
    r.take(room.saturating_add(1))
        .read_to_end(out)
        .map_err(|e| e.to_string())?;
    if (out.len() - before) as u64 > room {
        return Err(format!("unpacks to more than the {room} bytes allowed"));
    }
    Ok(())
}

/// Reads `r` to its end, refusing more than `size` bytes.
fn read_all(r: impl Read, size: u64) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(size as usize);
    r.take(size + 1)
        .read_to_end(&mut out)
        .map_err(|e| e.to_string())?;
    if out.len() as u64 > size {
        return Err(format!("unpacks to more than the {size} bytes it says"));
    }
    Ok(out)
}

/// LZ4's legacy frame: the magic, then blocks of (u32 compressed size,
/// data), each unpacking to at most 8 MiB; the build's 4-byte size
/// follows the last block.
fn lz4_legacy(payload: &[u8], size: usize) -> Result<Vec<u8>, String> {
    const MAGIC: u32 = 0x184c_2102;
    let mut out = vec![0u8; size];
    let mut done = 0;
    let mut at = 4;
    while at + 4 < payload.len() {
        let block = u32_at(payload, at).ok_or("truncated block header")? as usize;
        at += 4;
        if block as u32 == MAGIC {
            continue; // another frame follows
        }
        let data = payload
            .get(at..at.checked_add(block).ok_or("block size overflows")?)
            .ok_or_else(|| format!("block at byte {} runs past the payload", at - 4))?;
        done += lz4_flex::block::decompress_into(data, &mut out[done..])
            .map_err(|e| format!("block at byte {}: {e}", at - 4))?;
        at += block;
    }
    if done != size {
        return Err(format!("unpacked to {done} bytes, not the {size} it says"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A fake vmlinux: an ELF magic and compressible filler.
    fn vmlinux(n: usize) -> Vec<u8> {
        let mut v = b"\x7fELF".to_vec();
        v.extend((0..n).map(|i| (i % 251) as u8 ^ (i / 4096) as u8));
        v
    }

    fn with_size(mut data: Vec<u8>, size: usize) -> Vec<u8> {
        data.extend((size as u32).to_le_bytes());
        data
    }

    /// A bzImage around `payload`, located as the setup header says.
    fn bzimage(payload: &[u8]) -> Vec<u8> {
        let mut img = vec![0u8; 2 * 512];
        img[0x1f1] = 1;
        img[0x202..0x206].copy_from_slice(b"HdrS");
        img[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        // The payload starts 0x40 into the protected-mode code.
        img.extend(vec![0xcc; 0x40]);
        img[0x248..0x24c].copy_from_slice(&0x40u32.to_le_bytes());
        img[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        img.extend_from_slice(payload);
        img.extend(vec![0u8; 100]);
        img
    }

    fn each_format(raw: &[u8]) -> Vec<(Compression, Vec<u8>)> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(raw).unwrap();
        let gz = gz.finish().unwrap();
        let mut bz = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
        bz.write_all(raw).unwrap();
        let bz = with_size(bz.finish().unwrap(), raw.len());
        let mut xz = liblzma::write::XzEncoder::new(Vec::new(), 1);
        xz.write_all(raw).unwrap();
        let xz = with_size(xz.finish().unwrap(), raw.len());
        let opts = liblzma::stream::LzmaOptions::new_preset(1).unwrap();
        let stream = liblzma::stream::Stream::new_lzma_encoder(&opts).unwrap();
        let mut lz = liblzma::write::XzEncoder::new_stream(Vec::new(), stream);
        lz.write_all(raw).unwrap();
        let lzma = with_size(lz.finish().unwrap(), raw.len());
        let zst = with_size(
            ruzstd::encoding::compress_to_vec(raw, ruzstd::encoding::CompressionLevel::Fastest),
            raw.len(),
        );
        // LZ4 legacy: 8 MiB blocks.
        let mut lz4 = 0x184c_2102u32.to_le_bytes().to_vec();
        for chunk in raw.chunks(8 << 20) {
            let c = lz4_flex::block::compress(chunk);
            lz4.extend((c.len() as u32).to_le_bytes());
            lz4.extend(c);
        }
        let lz4 = with_size(lz4, raw.len());
        vec![
            (Compression::Gzip, gz),
            (Compression::Bzip2, bz),
            (Compression::Xz, xz),
            (Compression::Lzma, lzma),
            (Compression::Zstd, zst),
            (Compression::Lz4, lz4),
        ]
    }

    #[test]
    fn every_format_a_distribution_ships_unpacks_to_the_same_vmlinux() {
        // Over 8 MiB, so that LZ4 needs two blocks.
        let raw = vmlinux((9 << 20) + 123);
        for (format, packed) in each_format(&raw) {
            assert_eq!(Compression::detect(&packed), Some(format));
            let image = bzimage(&packed);
            let p = payload(&image).unwrap();
            assert_eq!(p, &packed[..], "{format:?} payload located");
            assert_eq!(unpack(p).unwrap(), raw, "{format:?}");
        }
    }

    #[test]
    fn a_corrupt_or_lying_payload_is_refused_not_trusted() {
        let raw = vmlinux(100_000);
        for (format, packed) in each_format(&raw) {
            // A size that claims more than the data holds.
            let mut lying = packed.clone();
            let n = lying.len();
            lying[n - 4..].copy_from_slice(&(raw.len() as u32 + 1).to_le_bytes());
            assert!(unpack(&lying).is_err(), "{format:?} with a wrong size");
            // Garbage in the middle.
            let mut broken = packed.clone();
            let mid = broken.len() / 2;
            broken[mid..mid + 16].fill(0x55);
            assert!(unpack(&broken).is_err(), "{format:?} with garbage");
            // Cut short.
            let cut = with_size(packed[..packed.len() / 2].to_vec(), raw.len());
            assert!(unpack(&cut).is_err(), "{format:?} cut short");
        }
        // An absurd size is refused before anything is allocated.
        let mut gz = each_format(&raw).remove(0).1;
        let n = gz.len();
        gz[n - 4..].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(unpack(&gz), Err(UnpackError::Corrupt { .. })));
    }

    #[test]
    fn a_payload_that_is_not_an_elf_vmlinux_is_refused() {
        let raw = vec![7u8; 5000];
        let (_, gz) = each_format(&raw).remove(0);
        assert_eq!(
            unpack(&gz).unwrap_err().to_string(),
            "its gzip payload did not unpack to an ELF vmlinux"
        );
    }

    #[test]
    fn unknown_formats_and_bad_headers_say_why() {
        assert!(matches!(
            unpack(&[0x89, b'L', b'Z', b'O', 0, 0, 0, 0, 1, 0, 0, 0]),
            Err(UnpackError::Unsupported(_))
        ));
        assert!(matches!(unpack(&[1; 16]), Err(UnpackError::Unsupported(_))));
        assert!(matches!(payload(&[0; 100]), Err(UnpackError::Header(_))));
        let mut old = bzimage(&[0x1f, 0x8b, 0, 0, 0, 0, 0, 0]);
        old[0x206..0x208].copy_from_slice(&0x0206u16.to_le_bytes());
        assert!(matches!(payload(&old), Err(UnpackError::Header(_))));
        let mut outside = bzimage(&[0x1f, 0x8b, 0, 0, 0, 0, 0, 0]);
        outside[0x24c..0x250].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(payload(&outside), Err(UnpackError::Header(_))));
    }
}
