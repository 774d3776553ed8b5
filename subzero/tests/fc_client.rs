//! Host-KVM: a Firecracker API client from PyPI (firecracker-python's `Api`
//! class) configures, starts, pauses, snapshots and resumes the counter
//! guest. `SUBZERO_FC_PYTHON` names a Python with that package (`.ci/run`
//! makes one); without it the test is skipped, except under CI=true.

mod common;

use std::process::Command;

#[test]
fn firecracker_python_drives_subzero() {
    if !common::kvm_available() {
        return;
    }
    let Some(python) = std::env::var_os("SUBZERO_FC_PYTHON") else {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("SUBZERO_FC_PYTHON is required under CI=true (.ci/run sets it)");
        }
        eprintln!("skipping: SUBZERO_FC_PYTHON is not set");
        return;
    };
    let dir = common::scratch("fc-client");
    let kernel = dir.join("counter.elf");
    std::fs::write(&kernel, subzero::demo::COUNTER_ELF).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fc_client.py");
    let out = Command::new(python)
        .arg(script)
        .arg(env!("CARGO_BIN_EXE_subzero"))
        .arg(&kernel)
        .arg(&dir)
        .output()
        .expect("run the Python client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}");
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("every check passed"), "{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
}
