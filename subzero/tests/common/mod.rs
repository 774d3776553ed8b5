//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// True when /dev/kvm can be used. Without it the test is skipped, except
/// under CI=true, where a missing /dev/kvm is a failure.
pub fn kvm_available() -> bool {
    match kvm_ioctls::Kvm::new() {
        Ok(_) => true,
        Err(e) => {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("/dev/kvm is required under CI=true but cannot be opened: {e}");
            }
            eprintln!("skipping: /dev/kvm unavailable ({e})");
            false
        }
    }
}

/// A scratch directory unique to this test process and `name`.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("subzero-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// Writes a minimal bzImage: a valid setup header (boot protocol 2.15,
/// 64-bit entry, 1 MiB init_size) and `payload` as the protected-mode code.
pub fn fake_bzimage(path: &Path, payload: &[u8]) {
    let mut img = vec![0u8; 1024];
    img[0x1f1] = 1; // setup_sects: 1 + the boot sector
    img[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    img[0x202..0x206].copy_from_slice(b"HdrS");
    img[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    img[0x211] = 0x01; // loadflags: LOADED_HIGH
    img[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes());
    img[0x22c..0x230].copy_from_slice(&0x7fff_ffffu32.to_le_bytes());
    img[0x236..0x238].copy_from_slice(&1u16.to_le_bytes()); // XLF_KERNEL_64
    img[0x238..0x23c].copy_from_slice(&255u32.to_le_bytes()); // cmdline_size
    img[0x260..0x264].copy_from_slice(&0x10_0000u32.to_le_bytes()); // init_size
    img.extend_from_slice(payload);
    std::fs::write(path, img).expect("write fake bzImage");
}
