use super::*;
use std::io::Write;

/// A "newc" archive of `files` and its trailer, padded to 512 bytes as
/// cpio(1) pads it.
pub(crate) fn archive(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    let trailer = std::str::from_utf8(TRAILER).unwrap();
    for (i, (name, data)) in files.iter().chain([&(trailer, &[][..])]).enumerate() {
        let mut h = format!("070701{:08x}{:08x}", i + 1, 0o100_644);
        for v in [0, 0, 1, 0, data.len(), 0, 0, 0, 0, name.len() + 1, 0] {
            h.push_str(&format!("{v:08x}"));
        }
        out.extend(h.as_bytes());
        out.extend(name.as_bytes());
        out.push(0);
        out.resize(out.len().next_multiple_of(4), 0);
        out.extend(*data);
        out.resize(out.len().next_multiple_of(4), 0);
    }
    out.resize(out.len().next_multiple_of(512), 0);
    out
}

pub(crate) fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

fn each_format(raw: &[u8]) -> Vec<(Compression, Vec<u8>)> {
    let mut bz = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
    bz.write_all(raw).unwrap();
    let mut xz = liblzma::write::XzEncoder::new(Vec::new(), 1);
    xz.write_all(raw).unwrap();
    let opts = liblzma::stream::LzmaOptions::new_preset(1).unwrap();
    let stream = liblzma::stream::Stream::new_lzma_encoder(&opts).unwrap();
    let mut lzma = liblzma::write::XzEncoder::new_stream(Vec::new(), stream);
    lzma.write_all(raw).unwrap();
    let zst = ruzstd::encoding::compress_to_vec(raw, ruzstd::encoding::CompressionLevel::Fastest);
    vec![
        (Compression::Gzip, gzip(raw)),
        (Compression::Bzip2, bz.finish().unwrap()),
        (Compression::Xz, xz.finish().unwrap()),
        (Compression::Lzma, lzma.finish().unwrap()),
        (Compression::Zstd, zst),
    ]
}

fn big_file() -> Vec<u8> {
    (0..300_000u32)
        .map(|i| (i % 251) as u8 ^ (i >> 12) as u8)
        .collect()
}

#[test]
fn every_format_unpacks_to_the_archive_it_holds() {
    let data = big_file();
    let cpio = archive(&[("init", b"#!/bin/sh\n"), ("bin/busybox", &data)]);
    for (format, packed) in each_format(&cpio) {
        let out = unpack(&packed, 1 << 30).unwrap_or_else(|e| panic!("{format:?}: {e}"));
        assert_eq!(out.formats, [format]);
        assert_eq!(out.cpio, cpio, "{format:?}");
    }
}

#[test]
fn a_plain_archive_then_a_compressed_one_become_two_plain_ones() {
    // What initramfs-tools makes: early microcode, plain, then the rest.
    let early = archive(&[("kernel/x86/microcode/AuthenticAMD.bin", b"ucode")]);
    let main = archive(&[("init", b"#!/bin/sh\n")]);
    for (format, packed) in each_format(&main) {
        let image = [early.as_slice(), &[0; 8], &packed, &[0; 5]].concat();
        let out = unpack(&image, 1 << 30).unwrap_or_else(|e| panic!("{format:?}: {e}"));
        // The plain archive's padding after its trailer is not kept.
        let early_len = archive_len(&early).unwrap();
        assert!(early[early_len..].iter().all(|&b| b == 0));
        let want = [&early[..early_len], &main].concat();
        assert_eq!(out.cpio, want, "{format:?}");
        assert_eq!(out.formats, [format]);
    }
    // Two compressed streams back to back, the second holding an archive
    // whose trailer is not padded to 4 bytes.
    let whole = archive(&[("a", b"1")]);
    let odd = &whole[..archive_len(&whole).unwrap() - 3];
    assert_ne!(odd.len() % 4, 0);
    let image = [gzip(&main), gzip(odd)].concat();
    let out = unpack(&image, 1 << 30).unwrap();
    assert_eq!(out.formats, [Compression::Gzip, Compression::Gzip]);
    assert_eq!(&out.cpio[..main.len()], main.as_slice());
    assert_eq!(out.cpio.len() % 4, 0);
}

#[test]
fn what_is_not_a_compressed_cpio_archive_boots_as_given() {
    let cpio = archive(&[("init", b"#!/bin/sh\n")]);
    assert_eq!(unpack(&cpio, 1 << 30), Err(Skip::Plain));
    let why = |image: &[u8], max: u64| match unpack(image, max) {
        Err(Skip::Other(why)) => why,
        other => panic!("{other:?}"),
    };
    // A compressed ramdisk image.
    let w = why(&gzip(&[0x53; 4096]), 1 << 30);
    assert!(w.contains("holds no cpio archive"), "{w}");
    // Garbage after the stream.
    let w = why(&[gzip(&cpio), b"junk".to_vec()].concat(), 1 << 30);
    assert!(w.contains("neither a cpio archive nor"), "{w}");
    // A truncated stream, and a corrupt one.
    let gz = gzip(&cpio);
    let w = why(&gz[..gz.len() - 10], 1 << 30);
    assert!(w.contains("gzip stream at byte 0"), "{w}");
    let mut bad = gz.clone();
    bad[20] ^= 0xff;
    why(&bad, 1 << 30);
    // More than the room.
    let w = why(&gz, 100);
    assert!(w.contains("more than the 100 bytes allowed"), "{w}");
    // A stream that holds an archive cut short, or junk after an archive,
    // or an archive off the 4-byte grid: the kernel would stop there.
    let w = why(&gzip(&cpio[..200]), 1 << 30);
    assert!(
        w.contains("past the end") || w.contains("no cpio header"),
        "{w}"
    );
    let w = why(&gzip(&[cpio.as_slice(), b"junk"].concat()), 1 << 30);
    assert!(w.contains("holds junk at byte 512"), "{w}");
    let w = why(&gzip(&[cpio.as_slice(), &[0, 0], &cpio].concat()), 1 << 30);
    assert!(w.contains("holds junk at byte 514"), "{w}");
    let two = gzip(&[cpio.as_slice(), &[0; 4], &cpio].concat());
    assert_eq!(unpack(&two, 1 << 30).unwrap().formats, [Compression::Gzip]);
    // A zstd frame whose content checksum does not match its data.
    let mut zst =
        ruzstd::encoding::compress_to_vec(&cpio[..], ruzstd::encoding::CompressionLevel::Fastest);
    let n = zst.len();
    assert_ne!(zst[4] & 0x04, 0, "the encoder writes a content checksum");
    zst[n - 1] ^= 0xff; // the checksum is the frame's last 4 bytes
    let w = why(&zst, 1 << 30);
    assert!(w.contains("checksum"), "{w}");
    // LZ4's legacy frame does not say where it ends.
    let w = why(&[0x02, 0x21, 0x4c, 0x18, 1, 0, 0, 0, 0], 1 << 30);
    assert!(w.contains("lz4"), "{w}");
    // A plain archive cut short, or with a header that lies.
    let w = why(&cpio[..200], 1 << 30);
    assert!(
        w.contains("past the end") || w.contains("no cpio header"),
        "{w}"
    );
    let mut lie = cpio.clone();
    lie[54..62].copy_from_slice(b"ffffffff");
    why(&[lie.as_slice(), &gz].concat(), 1 << 30);
    let mut not_hex = cpio.clone();
    not_hex[94..102].copy_from_slice(b"zzzzzzzz");
    why(&[not_hex.as_slice(), &gz].concat(), 1 << 30);
}

#[test]
fn garbage_never_panics() {
    let cpio = archive(&[("init", b"#!/bin/sh\n"), ("f", &big_file()[..5000])]);
    let gz = gzip(&cpio);
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..300 {
        let mut img = [cpio.as_slice(), &gz].concat();
        for _ in 0..4 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let at = (seed as usize) % img.len();
            img[at] = (seed >> 32) as u8;
        }
        let cut = (seed >> 40) as usize % img.len();
        let _ = unpack(&img[..cut.max(1)], 1 << 20);
        let _ = unpack(&img, 1 << 20);
    }
}
