//! cgroup v2 limits: `--cgroup cpu.max="50000 100000"` makes
//! `/sys/fs/cgroup/subzero/<id>`, enables each setting's controller on the
//! way down, writes the values, and the jailed child moves itself in.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::JailError;

/// Where cgroup v2 is mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// One `--cgroup KEY=VALUE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// The interface file, e.g. `cpu.max`.
    pub key: String,
    /// What to write to it.
    pub value: String,
}

impl Setting {
    /// Parses `KEY=VALUE`, the key being `<controller>.<file>`.
    pub fn parse(s: &str) -> Result<Setting, JailError> {
        let (key, value) = s.split_once('=').ok_or_else(|| {
            JailError::Cgroup(format!("{s:?}: give KEY=VALUE, e.g. cpu.max=50000"))
        })?;
        let ok = key.contains('.')
            && !key.starts_with('.')
            && !key.starts_with("cgroup.")
            && key
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '_');
        if !ok {
            return Err(JailError::Cgroup(format!(
                "{key:?} is not a controller's file (cpu.max, memory.max, pids.max, ...)"
            )));
        }
        Ok(Setting {
            key: key.into(),
            value: value.into(),
        })
    }

    /// The controller, e.g. `cpu` for `cpu.max`.
    pub fn controller(&self) -> &str {
        self.key.split('.').next().unwrap_or_default()
    }
}

fn write(path: &Path, value: &str) -> Result<(), JailError> {
    fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|mut f| f.write_all(value.as_bytes()))
        .map_err(|e| JailError::Cgroup(format!("writing {value:?} to {}: {e}", path.display())))
}

/// Creates `<root>/subzero/<id>` with `settings` applied; returns its path.
pub fn create(root: &Path, id: &str, settings: &[Setting]) -> Result<PathBuf, JailError> {
    let available = fs::read_to_string(root.join("cgroup.controllers")).map_err(|e| {
        JailError::Cgroup(format!(
            "cgroup v2 is not mounted at {} ({e}): mount it (mount -t cgroup2 none {})",
            root.display(),
            root.display()
        ))
    })?;
    let mut controllers: Vec<&str> = settings.iter().map(Setting::controller).collect();
    controllers.sort_unstable();
    controllers.dedup();
    for c in &controllers {
        if !available.split_whitespace().any(|a| a == *c) {
            return Err(JailError::Cgroup(format!(
                "controller {c:?} is not available in {} (it has: {})",
                root.display(),
                available.trim()
            )));
        }
    }
    let parent = root.join("subzero");
    if let Err(e) = fs::create_dir(&parent) {
        if e.kind() != std::io::ErrorKind::AlreadyExists {
            return Err(JailError::Cgroup(format!(
                "mkdir {}: {e}",
                parent.display()
            )));
        }
    }
    for c in &controllers {
        write(&root.join("cgroup.subtree_control"), &format!("+{c}"))?;
        write(&parent.join("cgroup.subtree_control"), &format!("+{c}"))?;
    }
    let dir = parent.join(id);
    fs::create_dir(&dir).map_err(|e| {
        JailError::Cgroup(format!(
            "mkdir {}: {e} (a cgroup left by an earlier run with this --id: rmdir it)",
            dir.display()
        ))
    })?;
    for s in settings {
        if let Err(e) = write(&dir.join(&s.key), &s.value) {
            let _ = fs::remove_dir(&dir);
            return Err(e);
        }
    }
    Ok(dir)
}

/// Moves the calling process into `dir`.
pub fn join(dir: &Path) -> Result<(), JailError> {
    write(&dir.join("cgroup.procs"), "0")
}

/// Removes the (by now empty) cgroup, after the jailed VMM has exited.
pub fn remove(dir: &Path) {
    if let Err(e) = fs::remove_dir(dir) {
        log::warn!("jail: could not remove the cgroup {}: {e}", dir.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_name_a_controller_file() {
        let s = Setting::parse("cpu.max=50000 100000").unwrap();
        assert_eq!(
            (s.key.as_str(), s.value.as_str()),
            ("cpu.max", "50000 100000")
        );
        assert_eq!(s.controller(), "cpu");
        assert_eq!(
            Setting::parse("memory.high=1G").unwrap().controller(),
            "memory"
        );
        for bad in [
            "cpu.max",
            "../x=1",
            "cgroup.procs=1",
            "max=1",
            "cpu/../x.max=1",
        ] {
            assert!(Setting::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_missing_cgroup2_mount_says_how_to_mount_it() {
        let s = [Setting::parse("pids.max=10").unwrap()];
        let e = create(Path::new("/no/cgroup"), "vm0", &s)
            .unwrap_err()
            .to_string();
        assert!(e.contains("mount -t cgroup2 none /no/cgroup"), "{e}");
    }
}
