//! The layering ARCHITECTURE.md promises: dependencies point down. Leaf
//! modules never name the VMM (or the API above it).

use std::path::Path;

fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn leaf_modules_do_not_import_the_vmm_or_the_api() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    for leaf in ["stats", "devices", "arch", "kvm"] {
        sources(&src.join(leaf), &mut files);
    }
    for leaf in ["bus.rs", "exits.rs", "logger.rs"] {
        files.push(src.join(leaf));
    }
    assert!(files.len() > 40, "found only {} files", files.len());
    let mut offenders = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        for (n, line) in text.lines().enumerate() {
            if line.contains("crate::vmm") || line.contains("crate::api") {
                offenders.push(format!("{}:{}: {}", f.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(offenders.is_empty(), "{}", offenders.join("\n"));
}
