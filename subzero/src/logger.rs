//! Logging through `log` and env_logger's format, to a target and at a
//! level that `--log-path`/`--level` and the API's `PUT /logger` can set
//! while the VMM runs. `RUST_LOG`, when set, filters as env_logger does.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::Path;
use std::sync::Mutex;

use log::LevelFilter;

/// Where log lines go: stderr until a path is set.
static TARGET: Mutex<Option<std::fs::File>> = Mutex::new(None);

/// The writer env_logger is given: the current target.
struct Target;

impl Write for Target {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match TARGET.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            Some(file) => file.write(buf),
            None => io::stderr().write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match TARGET.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            Some(file) => file.flush(),
            None => io::stderr().flush(),
        }
    }
}

/// Installs the logger: at `level` (default warnings), or as `RUST_LOG`
/// says when it is set.
pub fn init(level: Option<LevelFilter>) {
    let from_env = std::env::var_os("RUST_LOG").is_some();
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("trace"));
    builder
        .format_timestamp_millis()
        .target(env_logger::Target::Pipe(Box::new(Target)));
    if builder.try_init().is_err() {
        return;
    }
    if !from_env || level.is_some() {
        log::set_max_level(level.unwrap_or(LevelFilter::Warn));
    }
}

/// Parses Firecracker's level names (Error, Warning, Info, Debug, Trace,
/// Off), in any case.
pub fn parse_level(name: &str) -> Result<LevelFilter, String> {
    match name.to_ascii_lowercase().as_str() {
        "off" => Ok(LevelFilter::Off),
        "error" => Ok(LevelFilter::Error),
        "warning" | "warn" => Ok(LevelFilter::Warn),
        "info" => Ok(LevelFilter::Info),
        "debug" => Ok(LevelFilter::Debug),
        "trace" => Ok(LevelFilter::Trace),
        _ => Err(format!(
            "{name:?} is not a log level: use Error, Warning, Info, Debug, Trace or Off"
        )),
    }
}

/// Sends log lines to `path` (a file, appended to, or a FIFO).
pub fn set_path(path: &Path) -> io::Result<()> {
    let file = OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("log file {}: {e}", path.display())))?;
    *TARGET.lock().unwrap_or_else(|p| p.into_inner()) = Some(file);
    Ok(())
}

/// Logs at `level` from now on.
pub fn set_level(level: LevelFilter) {
    log::set_max_level(level);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn firecracker_level_names_parse() {
        assert_eq!(parse_level("Warning"), Ok(LevelFilter::Warn));
        assert_eq!(parse_level("debug"), Ok(LevelFilter::Debug));
        assert!(parse_level("loud").unwrap_err().contains("Error, Warning"));
    }
}
