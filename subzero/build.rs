//! Assembles the embedded guests in guests/*.S into flat binaries (and the
//! counter into an ELF) with the system's GNU binutils (`as`, `objcopy`,
//! `ld`), into OUT_DIR.

use std::path::{Path, PathBuf};
use std::process::Command;

fn run(cmd: &mut Command) {
    let shown = format!("{cmd:?}");
    match cmd.status() {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("{shown} failed with {s}"),
        Err(e) => panic!(
            "cannot run {shown}: {e}. Subzero's embedded guests need GNU binutils \
             (`apt-get install binutils`)"
        ),
    }
}

fn main() {
    let out = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    assemble(&out, "exerciser");
    assemble(&out, "halt_wake");
    assemble(&out, "virtio_rng");
    link_elf(&out, "counter");
}

/// guests/NAME.S -> OUT_DIR/NAME.o; returns the object's path.
fn object(out: &str, name: &str) -> PathBuf {
    let src = format!("guests/{name}.S");
    println!("cargo:rerun-if-changed={src}");
    let obj = Path::new(out).join(format!("{name}.o"));
    run(Command::new("as").args(["--64", "-o"]).arg(&obj).arg(&src));
    obj
}

/// guests/NAME.S -> OUT_DIR/NAME.elf, an ELF executable at 2 MiB that
/// Subzero loads as it loads a vmlinux.
fn link_elf(out: &str, name: &str) {
    let obj = object(out, name);
    run(Command::new("ld")
        .args(["-m", "elf_x86_64", "-n", "--build-id=none"])
        .args(["-Ttext=0x200000", "-e", "_start", "-o"])
        .arg(Path::new(out).join(format!("{name}.elf")))
        .arg(&obj));
}

/// guests/NAME.S -> OUT_DIR/NAME.bin (the .text section, flat).
fn assemble(out: &str, name: &str) {
    let obj = object(out, name);
    run(Command::new("objcopy")
        .args(["-O", "binary", "-j", ".text"])
        .arg(&obj)
        .arg(Path::new(out).join(format!("{name}.bin"))));
}
