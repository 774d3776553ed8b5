//! Logging through `log` and env_logger's format, to a target and at a
//! level that `--log-path`/`--level` and the API's `PUT /logger` can set
//! while the VMM runs. `RUST_LOG`, when set, filters as env_logger does.
//!
//! Every error, warning and info line is rate-limited by the place in the
//! code that logs it (module and line): the first is written, then at most
//! one per [`REPEAT_INTERVAL`], saying how many like it were left out
//! (debug and trace lines, which a user asks for to see every event, are
//! only counted). So nothing a
//! guest does (a refused feature, a broken queue, a connection over the
//! limit, virtio-queue's own complaints) can make Subzero write an
//! unbounded log. [`counts`] says how often each place logged, for
//! `--stats`.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use log::{LevelFilter, Log, Metadata, Record};
use serde::{Deserialize, Serialize};

/// After a place has logged, its next line waits at least this long.
pub const REPEAT_INTERVAL: Duration = Duration::from_secs(10);
/// Longest first message kept to name a place in [`counts`].
const LABEL_LEN: usize = 120;

/// How often one place in the code logged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogCount {
    /// `module:line` of the place.
    pub site: String,
    /// Its level.
    pub level: String,
    /// Its first message (cut to 120 characters).
    pub first: String,
    /// Lines it asked for.
    pub count: u64,
    /// Lines that were written.
    pub written: u64,
}

struct Site {
    count: u64,
    written: u64,
    left_out: u64,
    last: Option<Instant>,
    level: log::Level,
    first: String,
}

/// env_logger's logger behind the rate limit.
struct Limited {
    inner: env_logger::Logger,
    sites: Mutex<HashMap<(String, u32), Site>>,
}

impl Log for Limited {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.inner.enabled(metadata)
    }

    fn log(&self, record: &Record<'_>) {
        if !self.inner.matches(record) {
            return;
        }
        let key = (
            record.module_path().unwrap_or(record.target()).to_string(),
            record.line().unwrap_or(0),
        );
        let left_out = {
            let mut sites = self.sites.lock().unwrap_or_else(|p| p.into_inner());
            let site = sites.entry(key).or_insert_with(|| Site {
                count: 0,
                written: 0,
                left_out: 0,
                last: None,
                level: record.level(),
                first: record.args().to_string().chars().take(LABEL_LEN).collect(),
            });
            site.count += 1;
            let now = Instant::now();
            // Debug and trace lines are asked for (RUST_LOG) to see every
            // event: they are counted, not limited.
            let limited = record.level() <= log::Level::Info;
            if limited
                && site
                    .last
                    .is_some_and(|t| now.duration_since(t) < REPEAT_INTERVAL)
            {
                site.left_out += 1;
                return;
            }
            site.last = Some(now);
            site.written += 1;
            std::mem::take(&mut site.left_out)
        };
        if left_out == 0 {
            self.inner.log(record);
        } else {
            self.inner.log(
                &Record::builder()
                    .metadata(record.metadata().clone())
                    .module_path(record.module_path())
                    .file(record.file())
                    .line(record.line())
                    .args(format_args!(
                        "{} ({left_out} more like this left out)",
                        record.args()
                    ))
                    .build(),
            );
        }
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

static LIMITED: std::sync::OnceLock<&'static Limited> = std::sync::OnceLock::new();

/// How often each place in the code logged since the start, busiest first.
pub fn counts() -> Vec<LogCount> {
    let Some(l) = LIMITED.get() else {
        return Vec::new();
    };
    let sites = l.sites.lock().unwrap_or_else(|p| p.into_inner());
    let mut v: Vec<LogCount> = sites
        .iter()
        .map(|((module, line), s)| LogCount {
            site: format!("{module}:{line}"),
            level: s.level.to_string(),
            first: s.first.clone(),
            count: s.count,
            written: s.written,
        })
        .collect();
    v.sort_by(|a, b| b.count.cmp(&a.count).then(a.site.cmp(&b.site)));
    v
}

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
    let inner = builder.build();
    let max = inner.filter();
    let limited: &'static Limited = Box::leak(Box::new(Limited {
        inner,
        sites: Mutex::new(HashMap::new()),
    }));
    if log::set_logger(limited).is_err() {
        return;
    }
    let _ = LIMITED.set(limited);
    log::set_max_level(max);
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
