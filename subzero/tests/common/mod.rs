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

/// A console sink whose bytes tests can read while the guest runs.
#[derive(Clone, Default)]
pub struct Console(pub std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Console {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Console {
    /// Everything written so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// The numbers of the complete `count N` lines in `text`.
pub fn counts(text: &str) -> Vec<u64> {
    text.split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .filter_map(|l| l.trim().strip_prefix("count ")?.parse().ok())
        .collect()
}

/// Polls `f` every 10 ms until it is true or `secs` pass.
pub fn wait_for(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    f()
}
