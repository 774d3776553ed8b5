use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use vm_memory::{Bytes, GuestAddress};

use super::request::{S_IOERR, S_OK, S_UNSUPP, T_FLUSH, T_GET_ID, T_IN, T_OUT};
use super::*;
use crate::bus::BusDevice;
use crate::devices::virtio::mmio::regs;
use crate::devices::virtio::testing::{readable, TestDriver, D, DATA, MEM_SIZE};
use std::os::unix::fs::OpenOptionsExt;

/// Where the tests put the request header.
pub(super) const HDR: u64 = DATA;
/// Where the tests put data buffers.
pub(super) const BUF: u64 = DATA + 0x1000;
/// Where the tests put the status byte.
pub(super) const STATUS: u64 = DATA + 0x40_0000;

/// A disk image under the temp directory, removed on drop.
pub(super) struct TempImage {
    pub path: PathBuf,
}

impl TempImage {
    pub fn new(name: &str, contents: &[u8]) -> Self {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "subzero-blk-{}-{}-{name}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, contents).unwrap();
        TempImage { path }
    }

    pub fn contents(&self) -> Vec<u8> {
        std::fs::read(&self.path).unwrap()
    }
}

impl Drop for TempImage {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Recognizable bytes: every sector differs, every byte within one too.
pub(super) fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i % 251) as u8 ^ (i / 512) as u8)
        .collect()
}

/// Writes a request header at [`HDR`].
pub(super) fn header(d: &TestDriver, kind: u32, sector: u64) {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&kind.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    d.mem.write_slice(&h, GuestAddress(HDR)).unwrap();
}

/// Submits `descs`, runs the device and returns (used length, status
/// byte at [`STATUS`]). The status byte is preset to 0xff.
pub(super) fn submit(d: &mut TestDriver, descs: &[D]) -> (u32, u8) {
    d.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    let before = d.used(0).len();
    let head = d.add_chain(0, descs);
    d.kick(0);
    let used = d.used(0);
    assert_eq!(used.len(), before + 1, "the chain came back");
    let (h, len) = used[before];
    assert_eq!(h, u32::from(head));
    (len, d.mem.read_obj(GuestAddress(STATUS)).unwrap())
}

/// The image at `path` on the io_uring engine (`uring`) or the
/// synchronous one. The host must allow io_uring: these tests cover both.
pub(super) fn open_engine(path: &std::path::Path, readonly: bool, uring: bool) -> Block {
    let opts = BlockOptions {
        readonly,
        engine: if uring {
            EngineChoice::Uring
        } else {
            EngineChoice::Sync
        },
        ..BlockOptions::default()
    };
    let blk = Block::open_with(path, &opts).unwrap();
    assert_eq!(blk.engine(), if uring { "io_uring" } else { "sync" });
    blk
}

/// A driven device on an image of `contents`, on either engine.
fn driver(img: &TempImage, readonly: bool, uring: bool) -> (TestDriver, Arc<BlockStats>) {
    let blk = open_engine(&img.path, readonly, uring);
    let stats = blk.stats();
    (TestDriver::new(Box::new(blk)), stats)
}

fn mem_bytes(d: &TestDriver, addr: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    d.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
    v
}

fn read_req(d: &mut TestDriver, sector: u64, len: u32) -> (u32, u8) {
    header(d, T_IN, sector);
    submit(d, &[(HDR, 16, false), (BUF, len, true), (STATUS, 1, true)])
}

fn write_req(d: &mut TestDriver, sector: u64, data: &[u8]) -> (u32, u8) {
    header(d, T_OUT, sector);
    d.mem.write_slice(data, GuestAddress(BUF)).unwrap();
    let len = data.len() as u32;
    submit(d, &[(HDR, 16, false), (BUF, len, false), (STATUS, 1, true)])
}

#[test]
fn read_returns_the_files_bytes_across_buffers() {
    for uring in [false, true] {
        let img = TempImage::new("read", &pattern(8 * 512));
        let (mut d, stats) = driver(&img, false, uring);
        header(&d, T_IN, 2);
        let descs = [
            (HDR, 16, false),
            (BUF, 700, true),
            (BUF + 0x2000, 324, true),
            (STATUS, 1, true),
        ];
        assert_eq!(submit(&mut d, &descs), (1025, S_OK));
        let mut got = mem_bytes(&d, BUF, 700);
        got.extend(mem_bytes(&d, BUF + 0x2000, 324));
        assert_eq!(got, img.contents()[1024..2048]);
        assert_eq!(stats.bytes_read.load(Ordering::Relaxed), 1024);
    }
}

#[test]
fn a_read_larger_than_the_bounce_buffer_is_whole() {
    for uring in [false, true] {
        let img = TempImage::new("bigread", &pattern(1 << 20));
        let (mut d, _) = driver(&img, false, uring);
        assert_eq!(read_req(&mut d, 1, 600 << 10), ((600 << 10) + 1, S_OK));
        assert_eq!(
            mem_bytes(&d, BUF, 600 << 10),
            img.contents()[512..512 + (600 << 10)]
        );
    }
}

#[test]
fn write_reaches_the_file_and_nothing_else_changes() {
    for uring in [false, true] {
        let img = TempImage::new("write", &pattern(8 * 512));
        let mut want = img.contents();
        let (mut d, stats) = driver(&img, false, uring);
        let data: Vec<u8> = (0..1024).map(|i| (i * 3) as u8).collect();
        // Header and data in one descriptor, status separate.
        header(&d, T_OUT, 3);
        d.mem.write_slice(&data, GuestAddress(HDR + 16)).unwrap();
        assert_eq!(
            submit(&mut d, &[(HDR, 16 + 1024, false), (STATUS, 1, true)]),
            (1, S_OK)
        );
        want[3 * 512..5 * 512].copy_from_slice(&data);
        assert_eq!(img.contents(), want);
        // The last sector, through write_req's separate data buffer.
        assert_eq!(write_req(&mut d, 7, &[0xab; 512]), (1, S_OK));
        want[7 * 512..].fill(0xab);
        assert_eq!(img.contents(), want);
        assert_eq!(stats.bytes_written.load(Ordering::Relaxed), 1536);
    }
}

#[test]
fn flush_get_id_and_unknown_types() {
    for uring in [false, true] {
        let img = TempImage::new("a-rather-long-image-name.raw", &pattern(4 * 512));
        let (mut d, stats) = driver(&img, false, uring);
        header(&d, T_FLUSH, 0);
        assert_eq!(
            submit(&mut d, &[(HDR, 16, false), (STATUS, 1, true)]),
            (1, S_OK)
        );
        assert_eq!(stats.flushes.load(Ordering::Relaxed), 1);

        header(&d, T_GET_ID, 0);
        let descs = [(HDR, 16, false), (BUF, 20, true), (STATUS, 1, true)];
        assert_eq!(submit(&mut d, &descs), (21, S_OK));
        let name = img.path.file_name().unwrap().as_encoded_bytes();
        assert_eq!(mem_bytes(&d, BUF, 20), name[..20], "file name, truncated");

        for kind in [2, 14, 0x1234, u32::MAX] {
            header(&d, kind, 0);
            assert_eq!(
                submit(&mut d, &[(HDR, 16, false), (STATUS, 1, true)]),
                (1, S_UNSUPP),
                "type {kind}"
            );
        }
        assert!(!d.needs_reset());
    }
}

#[test]
fn get_id_returns_the_given_id_zero_padded() {
    let img = TempImage::new("id", &pattern(512));
    let blk = Block::open(&img.path, false, Some("serial-7".into())).unwrap();
    let mut d = TestDriver::new(Box::new(blk));
    d.mem.write_slice(&[0xee; 20], GuestAddress(BUF)).unwrap();
    header(&d, T_GET_ID, 0);
    let descs = [(HDR, 16, false), (BUF, 20, true), (STATUS, 1, true)];
    assert_eq!(submit(&mut d, &descs), (21, S_OK));
    let mut want = b"serial-7".to_vec();
    want.resize(20, 0);
    assert_eq!(mem_bytes(&d, BUF, 20), want);
    let too_long = Block::open(&img.path, true, Some("x".repeat(21)));
    assert!(matches!(too_long, Err(BlockError::IdTooLong { .. })));
}

#[test]
fn a_read_only_disk_refuses_writes_and_offers_f_ro() {
    for uring in [false, true] {
        let img = TempImage::new("ro", &pattern(8 * 512));
        let before = img.contents();
        let (mut d, stats) = driver(&img, true, uring);
        d.write(regs::DEVICE_FEATURES_SEL, 0);
        let f = d.read(regs::DEVICE_FEATURES);
        assert_ne!(f & (1 << VIRTIO_BLK_F_RO), 0, "F_RO offered");
        assert_ne!(f & (1 << VIRTIO_BLK_F_FLUSH), 0, "F_FLUSH offered");
        assert_eq!(write_req(&mut d, 0, &[0; 512]), (1, S_IOERR));
        assert_eq!(img.contents(), before, "file untouched");
        assert_eq!(read_req(&mut d, 1, 512), (513, S_OK));
        assert_eq!(mem_bytes(&d, BUF, 512), before[512..1024]);
        header(&d, T_FLUSH, 0);
        assert_eq!(
            submit(&mut d, &[(HDR, 16, false), (STATUS, 1, true)]),
            (1, S_OK)
        );
        assert_eq!(stats.errors.load(Ordering::Relaxed), 1);
        assert!(!d.needs_reset());
    }
}

#[test]
fn requests_past_the_end_fail_and_the_device_goes_on() {
    for uring in [false, true] {
        let img = TempImage::new("end", &pattern(8 * 512));
        let before = img.contents();
        let (mut d, _) = driver(&img, false, uring);
        assert_eq!(read_req(&mut d, 7, 1024), (1, S_IOERR), "last sector + 1");
        assert_eq!(
            read_req(&mut d, 8, 512),
            (1, S_IOERR),
            "first sector past the end"
        );
        assert_eq!(read_req(&mut d, u64::MAX, 512), (1, S_IOERR));
        assert_eq!(read_req(&mut d, u64::MAX / 512 + 1, 512), (1, S_IOERR));
        assert_eq!(write_req(&mut d, u64::MAX, &[1; 512]), (1, S_IOERR));
        assert_eq!(write_req(&mut d, u64::MAX - 1, &[1; 1024]), (1, S_IOERR));
        assert_eq!(write_req(&mut d, 8, &[1; 512]), (1, S_IOERR));
        assert_eq!(img.contents(), before);
        assert!(!d.needs_reset());
        assert_eq!(read_req(&mut d, 7, 512), (513, S_OK));
        assert_eq!(mem_bytes(&d, BUF, 512), before[7 * 512..]);
    }
}

#[test]
fn wrong_directions_and_short_headers_fail_the_request() {
    for uring in [false, true] {
        let img = TempImage::new("dir", &pattern(8 * 512));
        let before = img.contents();
        let (mut d, stats) = driver(&img, false, uring);
        // A read whose data buffer the device may only read.
        header(&d, T_IN, 0);
        let descs = [(HDR, 16, false), (BUF, 512, false), (STATUS, 1, true)];
        assert_eq!(submit(&mut d, &descs), (1, S_IOERR));
        // A write whose data buffer is device-writable.
        header(&d, T_OUT, 0);
        let descs = [(HDR, 16, false), (BUF, 512, true), (STATUS, 1, true)];
        assert_eq!(submit(&mut d, &descs), (1, S_IOERR));
        // A data length that is not whole sectors.
        header(&d, T_IN, 0);
        let descs = [(HDR, 16, false), (BUF, 100, true), (STATUS, 1, true)];
        assert_eq!(submit(&mut d, &descs), (1, S_IOERR));
        // A header of 8 bytes.
        header(&d, T_IN, 0);
        assert_eq!(
            submit(&mut d, &[(HDR, 8, false), (STATUS, 1, true)]),
            (1, S_IOERR)
        );
        // The status byte in a device-readable buffer: no place for a status.
        header(&d, T_IN, 0);
        let descs = [(HDR, 16, false), (STATUS, 1, false)];
        assert_eq!(submit(&mut d, &descs), (0, 0xff), "returned untouched");
        assert_eq!(stats.bad_chains.load(Ordering::Relaxed), 1);
        assert_eq!(stats.errors.load(Ordering::Relaxed), 4);
        assert_eq!(img.contents(), before);
        assert!(!d.needs_reset());
        assert_eq!(write_req(&mut d, 0, &[7; 512]), (1, S_OK));
        assert_eq!(img.contents()[..512], [7; 512]);
    }
}

#[test]
fn broken_chains_come_back_empty_and_the_device_goes_on() {
    for uring in [false, true] {
        let img = TempImage::new("chains", &pattern(8 * 512));
        let before = img.contents();
        let (mut d, stats) = driver(&img, false, uring);
        header(&d, T_OUT, 0);
        // A descriptor that is its own successor.
        d.put_desc(0, 15, HDR, 16, 1, 15);
        d.publish(0, 15);
        // A data buffer past the end of guest memory.
        d.add_chain(
            0,
            &[
                (HDR, 16, false),
                (MEM_SIZE as u64 - 256, 512, false),
                (STATUS, 1, true),
            ],
        );
        // A buffer at an address that wraps around.
        d.add_chain(
            0,
            &[
                (HDR, 16, false),
                (u64::MAX - 8, 512, false),
                (STATUS, 1, true),
            ],
        );
        // 24 MiB of data in two overlapping buffers: longer than any request.
        d.add_chain(
            0,
            &[
                (HDR, 16, false),
                (BUF, 12 << 20, false),
                (BUF, 12 << 20, false),
                (STATUS, 1, true),
            ],
        );
        // A writable buffer followed by a readable one.
        d.add_chain(0, &[(STATUS, 1, true), (HDR, 16, false)]);
        d.kick(0);
        let used = d.used(0);
        assert_eq!(used.len(), 5);
        assert_eq!(used[0].0, 15);
        // A refused chain gets IOERR in its status byte (used length 1) when it
        // has a writable byte in guest memory, so the driver cannot mistake a
        // stale status for success; otherwise it comes back with length 0.
        assert!(used.iter().all(|&(_, len)| len <= 1), "{used:?}");
        assert!(
            used.iter().filter(|&&(_, len)| len == 1).count() >= 4,
            "{used:?}"
        );
        let status: u8 =
            vm_memory::Bytes::read_obj(&d.mem, vm_memory::GuestAddress(STATUS)).unwrap();
        assert_eq!(status, S_IOERR);
        assert_eq!(stats.bad_chains.load(Ordering::Relaxed), 5);
        assert_eq!(img.contents(), before);
        assert!(!d.needs_reset());
        assert_eq!(write_req(&mut d, 1, &[9; 512]), (1, S_OK));
        assert_eq!(img.contents()[512..1024], [9; 512]);
    }
}

#[test]
fn config_space_reports_capacity_seg_max_and_block_size() {
    // 8 sectors and 100 bytes: the partial sector is not exposed.
    let img = TempImage::new("config", &pattern(8 * 512 + 100));
    let blk = Block::open(&img.path, false, None).unwrap();
    assert_eq!(blk.capacity_sectors(), 8);
    let mut wild = [0xff; 8];
    blk.read_config(u64::MAX - 3, &mut wild);
    assert_eq!(wild, [0; 8]);
    let mut d = TestDriver::new(Box::new(blk));
    let cfg = |d: &mut TestDriver, off: u64| d.read(regs::CONFIG + off);
    assert_eq!((cfg(&mut d, 0), cfg(&mut d, 4)), (8, 0), "capacity");
    assert_eq!(cfg(&mut d, 12), 254, "seg_max");
    assert_eq!(cfg(&mut d, 20), 512, "blk_size");
    assert_eq!(cfg(&mut d, 24), 0, "past the end");
    let mut odd = [0xffu8; 3];
    d.transport.read(regs::CONFIG + 22, &mut odd);
    assert_eq!(odd, [0, 0, 0], "straddling the end");
    let mut byte = [0u8; 1];
    d.transport.read(regs::CONFIG + 21, &mut byte);
    assert_eq!(byte, [2], "byte 1 of blk_size");
    d.write(regs::DEVICE_FEATURES_SEL, 0);
    let f = d.read(regs::DEVICE_FEATURES);
    assert_eq!(f & (1 << VIRTIO_BLK_F_RO), 0, "writable disk");
    assert_ne!(f & (1 << VIRTIO_BLK_F_SEG_MAX), 0);
    assert_ne!(f & (1 << VIRTIO_BLK_F_BLK_SIZE), 0);
}

#[test]
fn open_errors_name_the_file_and_say_what_is_wrong() {
    let missing = std::env::temp_dir().join(format!("subzero-blk-missing-{}", std::process::id()));
    let e = Block::open(&missing, false, None).err().unwrap();
    assert!(matches!(e, BlockError::NotFound { .. }));
    assert!(e.to_string().contains(&*missing.to_string_lossy()), "{e}");

    let dir = std::env::temp_dir();
    for ro in [false, true] {
        let e = Block::open(&dir, ro, None).err().unwrap();
        assert!(matches!(e, BlockError::IsDirectory { .. }), "{e}");
        assert!(e.to_string().contains("directory"), "{e}");
    }

    let e = Block::open(Path::new("/dev/null"), true, None)
        .err()
        .unwrap();
    assert!(matches!(e, BlockError::NotADisk { .. }), "{e}");
    assert!(e.to_string().contains("/dev/null"), "{e}");

    let empty = TempImage::new("empty", &[]);
    let e = Block::open(&empty.path, false, None).err().unwrap();
    assert!(e.to_string().contains("empty"), "{e}");
    let tiny = TempImage::new("tiny", &[1; 100]);
    let e = Block::open(&tiny.path, false, None).err().unwrap();
    assert!(matches!(e, BlockError::TooSmall { size: 100, .. }), "{e}");
}

#[test]
fn an_image_in_use_is_locked() {
    let img = TempImage::new("locked", &pattern(512));
    let first = Block::open(&img.path, false, None).unwrap();
    let name = img.path.to_string_lossy().into_owned();
    for ro in [false, true] {
        let e = Block::open(&img.path, ro, None).err().unwrap();
        assert!(matches!(e, BlockError::Locked { .. }), "{e}");
        assert!(e.to_string().contains(&name), "{e}");
        assert!(e.to_string().contains("locked by another user"), "{e}");
    }
    drop(first);
    // Readers share the image, but keep writers out.
    let r1 = Block::open(&img.path, true, None).unwrap();
    let _r2 = Block::open(&img.path, true, None).unwrap();
    assert!(Block::open(&img.path, false, None).is_err());
    drop(r1);
}

#[test]
fn an_over_long_request_fails_with_an_io_error_status() {
    for uring in [false, true] {
        let img = TempImage::new("long", &pattern(64 << 10));
        let (mut d, _stats) = driver(&img, false, uring);
        header(&d, T_IN, 0);
        // 18 MiB of (overlapping) writable data: above MAX_CHAIN.
        let nine = 9 << 20;
        let descs = [
            (HDR, 16, false),
            (BUF, nine, true),
            (BUF, nine, true),
            (STATUS, 1, true),
        ];
        // Linux leaves the status byte of a reused request at its last value: S_OK.
        assert_eq!(
            submit(&mut d, &descs),
            (1, S_IOERR),
            "status left for the guest to misread"
        );
    }
}

#[test]
fn a_swapped_backing_file_is_served_and_the_driver_told() {
    for uring in [false, true] {
        let old = TempImage::new("swap-old", &pattern(8 * 512));
        let new_bytes: Vec<u8> = pattern(16 * 512).iter().map(|b| !b).collect();
        let new = TempImage::new("swap-new", &new_bytes);
        let (mut d, _) = driver(&old, false, uring);
        let generation = d.read(regs::CONFIG_GENERATION);
        let irqs = d.interrupts();
        d.shared.swap_backing(&new.path).unwrap();
        assert_eq!(d.read(regs::CONFIG), 16, "the new capacity");
        assert_ne!(d.read(regs::CONFIG_GENERATION), generation);
        assert!(d.interrupts() > irqs, "a configuration interrupt");
        assert_eq!(d.read(regs::INTERRUPT_STATUS) & 2, 2, "INT_CONFIG");
        assert_eq!(read_req(&mut d, 9, 512).1, S_OK);
        assert_eq!(mem_bytes(&d, BUF, 512), new_bytes[9 * 512..10 * 512]);
        // The old image is released: another user can lock it now.
        assert!(Block::open(&old.path, false, None).is_ok());
        // A bad path leaves the device on the image it has, and says why.
        let err = d
            .shared
            .swap_backing(std::path::Path::new("/nonexistent/disk.img"))
            .unwrap_err();
        assert!(err.contains("/nonexistent/disk.img"), "{err}");
        assert_eq!(read_req(&mut d, 15, 512).1, S_OK);
    }
}

/// A loop device over `img`, detached on drop; `None` (and why) where loop
/// devices cannot be made (not root). Under CI=true that is a failure.
struct Loop(String);

impl Loop {
    fn new(img: &TempImage) -> Option<Loop> {
        let out = std::process::Command::new("losetup")
            .args(["-f", "--show"])
            .arg(&img.path)
            .output();
        match out {
            Ok(o) if o.status.success() => {
                Some(Loop(String::from_utf8_lossy(&o.stdout).trim().to_string()))
            }
            other => {
                let why = format!("{other:?}");
                if std::env::var("CI").as_deref() == Ok("true") {
                    panic!("losetup is needed under CI=true: {why}");
                }
                eprintln!("skipping: no loop device ({why})");
                None
            }
        }
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup")
            .args(["-d", &self.0])
            .status();
    }
}

#[test]
fn a_host_block_device_is_opened_exclusively() {
    let img = TempImage::new("loop", &pattern(64 * 512));
    let Some(dev) = Loop::new(&img) else { return };
    let path = std::path::Path::new(&dev.0);
    let excl = |p: &std::path::Path| {
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_EXCL)
            .open(p)
    };
    let blk = Block::open(path, true, None).unwrap();
    assert_eq!(blk.capacity_sectors(), 64);
    assert!(
        excl(path).is_err(),
        "another exclusive opener got the device"
    );
    drop(blk);
    let holder = excl(path).unwrap();
    let err = Block::open(path, true, None)
        .err()
        .expect("the device is held")
        .to_string();
    assert!(err.contains(&dev.0), "{err}");
    drop(holder);
}

#[test]
fn a_rate_limited_disk_defers_requests_and_serves_them_when_tokens_refill() {
    use crate::devices::rate_limiter::TokenBucketConfig;
    let img = TempImage::new("limited", &pattern(64 * 512));
    let mut blk = Block::open(&img.path, false, None).unwrap();
    let bucket = |size| TokenBucketConfig {
        size,
        one_time_burst: None,
        refill_time: 200,
    };
    // One request and 4 KiB per 200 ms.
    blk.set_rate_limiter(&RateLimiterConfig {
        bandwidth: Some(bucket(4096)),
        ops: Some(bucket(1)),
    });
    let stats = blk.stats();
    let timer = blk.limiter.timer_fd();
    let mut d = TestDriver::new(Box::new(blk));
    header(&d, T_IN, 1);
    let req = |n: u64| {
        [
            (HDR, 16, false),
            (BUF + n * 0x1000, 512, true),
            (STATUS + n, 1, true),
        ]
    };
    d.add_chain(0, &req(0));
    d.add_chain(0, &req(1));
    d.kick(0);
    assert_eq!(d.used(0).len(), 1, "the second request waits");
    assert_eq!(stats.throttled.load(Ordering::Relaxed), 1);
    let shown = &d.shared.counters().throttled;
    assert_eq!(shown.load(Ordering::Relaxed), 1, "--stats counts it");
    assert_eq!(
        d.shared.save().queues[0].next_avail,
        1,
        "the waiting request is back on the ring (a snapshot keeps it)"
    );
    d.kick(0);
    assert_eq!(d.used(0).len(), 1, "a kick does not get past the limiter");
    assert!(readable(timer), "the limiter's timer fires");
    d.source(0);
    assert_eq!(d.used(0).len(), 2, "served once the bucket refilled");
    assert_eq!(
        mem_bytes(&d, BUF + 0x1000, 512),
        pattern(64 * 512)[512..1024]
    );
    // A read four times the bandwidth bucket still gets through.
    header(&d, T_IN, 0);
    d.add_chain(
        0,
        &[(HDR, 16, false), (BUF, 16 << 10, true), (STATUS, 1, true)],
    );
    d.kick(0);
    for _ in 0..10 {
        if d.used(0).len() == 3 {
            break;
        }
        assert!(readable(timer), "the limiter's timer fires");
        d.source(0);
    }
    assert_eq!(d.used(0).len(), 3, "an oversized request completes");
    assert_eq!(mem_bytes(&d, STATUS, 1), [S_OK]);
}

#[test]
fn auto_serves_an_image_in_memory_synchronously_and_others_on_io_uring() {
    let shm = PathBuf::from(format!("/dev/shm/subzero-blk-{}-auto", std::process::id()));
    std::fs::write(&shm, vec![0u8; 4096]).unwrap();
    let in_memory = super::open::in_memory(&std::fs::File::open(&shm).unwrap());
    let auto = Block::open(&shm, false, None).map(|b| b.engine());
    let explicit = open_engine(&shm, false, true).engine();
    let _ = std::fs::remove_file(&shm);
    assert_eq!(in_memory, Some("tmpfs"), "/dev/shm is a tmpfs");
    assert_eq!(auto.unwrap(), "sync", "auto on tmpfs");
    assert_eq!(explicit, "io_uring", "engine=uring still means io_uring");
    // The build directory is on a disk's file system (unless it is not:
    // then auto must say sync there too).
    let disk = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(format!("target-blk-auto-{}.img", std::process::id()));
    std::fs::write(&disk, vec![0u8; 4096]).unwrap();
    let kind = super::open::in_memory(&std::fs::File::open(&disk).unwrap());
    let auto = Block::open(&disk, false, None).map(|b| b.engine());
    let _ = std::fs::remove_file(&disk);
    let want = if kind.is_some() { "sync" } else { "io_uring" };
    assert_eq!(auto.unwrap(), want, "auto on {kind:?}");
}
