//! Turns L1's console lines (timestamped on arrival at the host) into facts
//! about L1 and one [`ScenarioRun`] per scenario.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

/// One console line and when the host received it, measured from QEMU's start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// Arrival time since QEMU was spawned.
    pub at: Duration,
    /// The line without its line ending (all `\r` removed).
    pub text: String,
}

impl Line {
    /// A line (used by tests and the reader).
    pub fn new(at: Duration, text: impl Into<String>) -> Self {
        Line {
            at,
            text: text.into(),
        }
    }
}

/// The text after `marker` if the line contains it. `marker` is e.g.
/// `"@@L1 END "`; a marker may follow other text on the same line.
pub fn after<'a>(line: &'a str, marker: &str) -> Option<&'a str> {
    line.find(marker)
        .map(|i| line[i + marker.len()..].trim_end())
}

/// The figure in a benchmark line: the number before its unit (`MiB/s`,
/// `IOPS`), e.g. 12.5 and "MiB/s" from
/// `lab-peer: tcp:...: sent 1 bytes, received 0 bytes in 0.1s (12.5 MiB/s)`.
pub fn bench_figure(line: &str) -> Option<(f64, &'static str)> {
    let words: Vec<&str> = line.split_whitespace().collect();
    for unit in ["MiB/s", "IOPS"] {
        if let Some(i) = words.iter().rposition(|w| w.trim_end_matches(')') == unit) {
            let n = words.get(i.checked_sub(1)?)?.trim_start_matches('(');
            return n.parse().ok().map(|v| (v, unit));
        }
    }
    None
}

/// What L1 reported about itself.
#[derive(Debug, Default, Clone)]
pub struct L1Facts {
    /// Arrival of `@@L1 INIT` (L1's init started).
    pub init_at: Option<Duration>,
    /// Whether /proc/cpuinfo in L1 lists svm / npt.
    pub svm: Option<bool>,
    /// Whether /proc/cpuinfo in L1 lists npt.
    pub npt: Option<bool>,
    /// Each insmod: (module file, "ok" or the failure).
    pub insmods: Vec<(String, String)>,
    /// Whether /dev/kvm existed after insmod.
    pub kvm_present: Option<bool>,
    /// `subzero --version`: (exit code, first output line).
    pub version: Option<(i32, String)>,
    /// Arrival of `@@L1 ALL_DONE`.
    pub all_done_at: Option<Duration>,
    /// The PVH note type bytes of /l2/vmlinux and /l2/vmlinux-nopvh, as
    /// `"12 00 00 00 -> ff 00 00 00"`.
    pub nopvh: Option<String>,
}

/// One scenario as seen from L1's console.
#[derive(Debug, Default, Clone)]
pub struct ScenarioRun {
    /// Scenario name.
    pub name: String,
    /// Arrival of `@@L1 START` (printed immediately before exec'ing subzero).
    pub start_at: Option<Duration>,
    /// Arrival of `@@L1 END`.
    pub end_at: Option<Duration>,
    /// subzero's exit code as L1's shell saw it (137: killed by the timeout).
    pub exit_code: Option<i32>,
    /// Everything subzero printed on stdout (the L2 console) between START and END.
    pub output: Vec<Line>,
    /// subzero's stderr lines.
    pub stderr: Vec<String>,
    /// subzero outlived its timeout and SIGKILL (L1 gave up waiting).
    pub hung: bool,
    /// L1's diagnostics for a hung subzero (task states, kernel stacks).
    pub diag: Vec<String>,
    /// What L1 checked around the run (`@@L1 CHECK <name> <KEY> <value>`).
    pub checks: Vec<(String, String)>,
}

impl ScenarioRun {
    /// The value of the first `@@L2 <key> <value>` line the guest printed.
    pub fn l2(&self, key: &str) -> Option<&str> {
        let marker = format!("@@L2 {key} ");
        let bare = format!("@@L2 {key}");
        self.output.iter().find_map(|l| {
            after(&l.text, &marker).or_else(|| after(&l.text, &bare).filter(|rest| rest.is_empty()))
        })
    }

    /// The value of the first `@@L1 CHECK <name> <key> <value>` line.
    pub fn l1(&self, key: &str) -> Option<&str> {
        self.checks
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Arrival of the first line containing `@@L2 <key>`.
    pub fn l2_at(&self, key: &str) -> Option<Duration> {
        let marker = format!("@@L2 {key}");
        self.output
            .iter()
            .find(|l| l.text.contains(&marker))
            .map(|l| l.at)
    }

    /// Host-side time from subzero's start to the guest's first init marker.
    pub fn boot_time(&self) -> Option<Duration> {
        self.l2_at("INIT")?.checked_sub(self.start_at?)
    }

    /// Host-side time from subzero's start to L1 seeing it exit.
    pub fn wall_time(&self) -> Option<Duration> {
        self.end_at?.checked_sub(self.start_at?)
    }

    /// Whether any stdout or stderr line contains `needle` (case-insensitive).
    pub fn mentions(&self, needle: &str) -> bool {
        let needle = needle.to_lowercase();
        self.output
            .iter()
            .map(|l| l.text.as_str())
            .chain(self.stderr.iter().map(|s| s.as_str()))
            .any(|t| t.to_lowercase().contains(&needle))
    }

    /// A description for assertion messages: exit code, stdout and stderr.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        let _ = write!(s, "scenario `{}`: subzero ", self.name);
        match (self.start_at, self.exit_code) {
            (None, _) => s.push_str("was never started (L1 did not reach this scenario)"),
            (Some(_), None) if self.hung => s.push_str(
                "could not be killed after its timeout (stuck in the kernel?); L1 moved on",
            ),
            (Some(_), None) => {
                s.push_str("did not finish (no END marker; L1 stopped or timed out)")
            }
            (Some(_), Some(137)) => s.push_str("was killed by the per-scenario timeout (exit 137)"),
            (Some(_), Some(rc)) => {
                let _ = write!(s, "exited with code {rc}");
            }
        }
        if let Some(w) = self.wall_time() {
            let _ = write!(s, " after {:.1}s", w.as_secs_f64());
        }
        let _ = write!(
            s,
            "\n--- guest console / subzero stdout ({} lines) ---\n",
            self.output.len()
        );
        for l in &self.output {
            let _ = writeln!(s, "[{:8.3}] {}", l.at.as_secs_f64(), l.text);
        }
        let _ = writeln!(s, "--- subzero stderr ({} lines) ---", self.stderr.len());
        for l in &self.stderr {
            let _ = writeln!(s, "{l}");
        }
        if !self.checks.is_empty() {
            let _ = writeln!(s, "--- L1's checks ---");
            for (k, v) in &self.checks {
                let _ = writeln!(s, "{k} {v}");
            }
        }
        if !self.diag.is_empty() {
            let _ = writeln!(s, "--- L1 diagnostics of the hung subzero ---");
            for l in &self.diag {
                let _ = writeln!(s, "{l}");
            }
        }
        s.push_str("--- end ---");
        s
    }
}

/// Everything parsed from one L1 boot.
#[derive(Debug, Default, Clone)]
pub struct Parsed {
    /// Facts about L1.
    pub l1: L1Facts,
    /// Scenarios by name.
    pub scenarios: BTreeMap<String, ScenarioRun>,
}

/// Parses L1's console.
pub fn parse(lines: &[Line]) -> Parsed {
    let mut p = Parsed::default();
    let mut current: Option<String> = None;
    for line in lines {
        let t = line.text.as_str();
        if let Some(rest) = after(t, "@@L1 BEGIN ") {
            let name = rest.to_string();
            p.scenarios.insert(
                name.clone(),
                ScenarioRun {
                    name: name.clone(),
                    ..Default::default()
                },
            );
            current = Some(name);
        } else if let Some(rest) = after(t, "@@L1 START ") {
            if let Some(sc) = p.scenarios.get_mut(rest) {
                sc.start_at = Some(line.at);
            }
        } else if let Some(rest) = after(t, "@@L1 END ") {
            let (name, rc) = rest.split_once(" rc=").unwrap_or((rest, ""));
            if let Some(sc) = p.scenarios.get_mut(name) {
                sc.end_at = Some(line.at);
                sc.exit_code = rc.trim().parse().ok();
                let before = &t[..t.find("@@L1 END ").unwrap()];
                if !before.is_empty() {
                    sc.output.push(Line::new(line.at, before));
                }
            }
            current = None;
        } else if let Some(rest) = after(t, "@@L1 STDERR ") {
            let (name, text) = rest
                .split_once(" | ")
                .unwrap_or((rest.trim_end_matches(" |"), ""));
            if let Some(sc) = p.scenarios.get_mut(name) {
                sc.stderr.push(text.to_string());
            }
        } else if let Some(rest) = after(t, "@@L1 CHECK ") {
            let mut it = rest.splitn(3, ' ');
            let (name, key) = (it.next().unwrap_or(""), it.next().unwrap_or(""));
            let value = it.next().unwrap_or("").trim();
            if let Some(sc) = p.scenarios.get_mut(name) {
                sc.checks.push((key.to_string(), value.to_string()));
            }
        } else if let Some(rest) = after(t, "@@L1 HUNG ") {
            let name = rest.split(' ').next().unwrap_or(rest);
            if let Some(sc) = p.scenarios.get_mut(name) {
                sc.hung = true;
            }
        } else if let Some(rest) = after(t, "@@L1 DIAG ") {
            let (name, text) = rest.split_once(" | ").unwrap_or((rest, ""));
            if let Some(sc) = p.scenarios.get_mut(name) {
                sc.diag.push(text.to_string());
            }
        } else if let Some(rest) = after(t, "@@L1 INIT") {
            let _ = rest;
            p.l1.init_at = Some(line.at);
        } else if let Some(rest) = after(t, "@@L1 SVM ") {
            p.l1.svm = Some(rest == "yes");
        } else if let Some(rest) = after(t, "@@L1 NPT ") {
            p.l1.npt = Some(rest == "yes");
        } else if let Some(rest) = after(t, "@@L1 INSMOD ") {
            let (m, res) = rest.split_once(' ').unwrap_or((rest, ""));
            p.l1.insmods.push((m.to_string(), res.to_string()));
        } else if let Some(rest) = after(t, "@@L1 KVM ") {
            p.l1.kvm_present = Some(rest == "present");
        } else if let Some(rest) = after(t, "@@L1 VERSION rc=") {
            let (rc, v) = rest.split_once(' ').unwrap_or((rest, ""));
            p.l1.version = Some((rc.parse().unwrap_or(-1), v.to_string()));
        } else if let Some(rest) = after(t, "@@L1 NOPVH note type bytes: ") {
            p.l1.nopvh = Some(rest.split_whitespace().collect::<Vec<_>>().join(" "));
        } else if after(t, "@@L1 ALL_DONE").is_some() {
            p.l1.all_done_at = Some(line.at);
        } else if let Some(name) = &current {
            // Includes `@@L1 SENT`, which L1 interleaves with the guest's output.
            p.scenarios.get_mut(name).unwrap().output.push(line.clone());
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<Line> {
        text.lines()
            .enumerate()
            .map(|(i, t)| Line::new(Duration::from_millis(100 * i as u64), t))
            .collect()
    }

    #[test]
    fn parses_l1_facts_and_scenarios() {
        let log = "\
SeaBIOS (version 1.16.2)
@@L1 INIT uptime=2.31
@@L1 SVM yes
@@L1 NPT yes
@@L1 INSMOD irqbypass.ko ok
@@L1 INSMOD kvm_amd.ko failed: insmod: can't insert: No such device
@@L1 KVM present
@@L1 VERSION rc=0 subzero 0.1.0
@@L1 NOPVH note type bytes:  12 00 00 00 ->  ff 00 00 00
@@L1 BEGIN boot
@@L1 START boot
@@L2 INIT scenario=boot
@@L2 UPTIME 0.91
@@L2 UNAME 6.1.0-56-cloud-amd64
@@L2 POWEROFF
[    1.234] reboot: Power down

@@L1 END boot rc=0
@@L1 BEGIN panic
@@L1 START panic
@@L2 INIT scenario=panic
@@L2 PANIC_TRIGGER
Kernel panic - not syncing: sysrq triggered crash@@L1 END panic rc=1
@@L1 STDERR panic | subzero: guest kernel panicked
@@L1 STDERR panic | 
@@L1 BEGIN smp
@@L1 START smp
@@L1 HUNG smp pid=77
@@L1 DIAG smp | task 77 state=D wchan=0
@@L1 DIAG smp |   [<0>] kvm_vcpu_ioctl+0x1/0x2

@@L1 END smp rc=hung
@@L1 CHECK smp SHA256_AFTER  abc def 
@@L1 CHECK smp EMPTY
@@L1 BEGIN stdin
@@L1 START stdin
@@L2 READY
@@L1 SENT stdin
@@L2 ECHO [sz-123]
@@L1 ALL_DONE uptime=40.0
";
        let p = parse(&lines(log));
        assert_eq!(p.l1.init_at, Some(Duration::from_millis(100)));
        assert_eq!(
            (p.l1.svm, p.l1.npt, p.l1.kvm_present),
            (Some(true), Some(true), Some(true))
        );
        assert_eq!(p.l1.insmods[0], ("irqbypass.ko".into(), "ok".into()));
        assert_eq!(p.l1.insmods[1].0, "kvm_amd.ko");
        assert!(p.l1.insmods[1].1.starts_with("failed: "));
        assert_eq!(p.l1.version, Some((0, "subzero 0.1.0".into())));
        assert_eq!(p.l1.nopvh.as_deref(), Some("12 00 00 00 -> ff 00 00 00"));
        assert_eq!(p.l1.all_done_at, Some(Duration::from_millis(3900)));

        let boot = &p.scenarios["boot"];
        assert_eq!(boot.exit_code, Some(0));
        assert_eq!(boot.l2("UNAME"), Some("6.1.0-56-cloud-amd64"));
        assert_eq!(boot.l2("INIT"), Some("scenario=boot"));
        assert_eq!(boot.l2("POWEROFF"), Some(""));
        assert_eq!(boot.l2("MISSING"), None);
        assert_eq!(boot.boot_time(), Some(Duration::from_millis(100)));
        assert_eq!(boot.wall_time(), Some(Duration::from_millis(700)));
        assert_eq!(boot.output.len(), 6);

        let panic = &p.scenarios["panic"];
        assert_eq!(panic.exit_code, Some(1));
        assert_eq!(panic.stderr, ["subzero: guest kernel panicked", ""]);
        assert_eq!(
            panic.output.last().unwrap().text,
            "Kernel panic - not syncing: sysrq triggered crash"
        );
        assert!(panic.mentions("PANICKED"));
        assert!(!boot.mentions("panic"));

        let smp = &p.scenarios["smp"];
        assert!(smp.hung);
        assert_eq!(smp.exit_code, None);
        assert_eq!(smp.diag.len(), 2);
        assert_eq!(smp.diag[1], "  [<0>] kvm_vcpu_ioctl+0x1/0x2");
        assert!(smp.describe().contains("could not be killed"));
        assert_eq!(smp.l1("SHA256_AFTER"), Some("abc def"));
        assert_eq!(smp.l1("EMPTY"), Some(""));
        assert_eq!(smp.l1("MISSING"), None);
        assert!(smp.describe().contains("SHA256_AFTER abc def"));

        let stdin = &p.scenarios["stdin"];
        assert_eq!(stdin.exit_code, None);
        assert_eq!(stdin.l2("ECHO"), Some("[sz-123]"));
        assert!(stdin.describe().contains("did not finish"));
        assert!(stdin.describe().contains("@@L2 ECHO [sz-123]"));
    }

    #[test]
    fn bench_figures_are_the_number_before_the_unit() {
        assert_eq!(
            bench_figure(
                "lab-peer: tcp:1.2.3.4:9: sent 5 bytes, received 0 bytes in 0.5s (12.5 MiB/s)"
            ),
            Some((12.5, "MiB/s"))
        );
        assert_eq!(
            bench_figure("rand read /dev/vda: 10 reads of 4096 bytes at qd 16 in 5.000s: 2 IOPS"),
            Some((2.0, "IOPS"))
        );
        assert_eq!(
            bench_figure("seq read /dev/vda: 67108864 bytes in 1.000s: 64.0 MiB/s"),
            Some((64.0, "MiB/s"))
        );
        assert_eq!(bench_figure("lab-peer: connect: refused"), None);
    }

    #[test]
    fn markers_may_follow_other_text() {
        assert_eq!(after("junk@@L2 NPROC 4  ", "@@L2 NPROC "), Some("4"));
        assert_eq!(after("@@L2 NPROC 4", "@@L2 CPU_ONLINE "), None);
    }
}
