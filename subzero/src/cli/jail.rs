//! `subzero jail`: run `subzero run` (or the API mode) confined, as
//! Firecracker's jailer runs Firecracker. The work is in `subzero::jail`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use subzero::jail::{self, cgroup, layout::Placement, privs::Rlimits, JailConfig};

/// Arguments of `subzero jail`.
#[derive(clap::Args)]
pub struct JailArgs {
    /// The user id the VMM runs as.
    #[arg(long)]
    uid: u32,
    /// The group id the VMM runs as (with no supplementary groups).
    #[arg(long)]
    gid: u32,
    /// Where jails are made: the VMM's root is DIR/subzero/ID/root.
    #[arg(long, value_name = "DIR")]
    chroot_base: PathBuf,
    /// The jail's name: letters, digits and '-', at most 64 (default: vm-<pid>).
    #[arg(long)]
    id: Option<String>,
    /// A cgroup v2 limit, written to /sys/fs/cgroup/subzero/ID/KEY (repeatable),
    /// e.g. cpu.max="50000 100000", memory.max=1G, pids.max=64.
    #[arg(long = "cgroup", value_name = "KEY=VALUE", value_parser = parse_cgroup)]
    cgroups: Vec<cgroup::Setting>,
    /// A network namespace to join, e.g. /var/run/netns/vm0.
    #[arg(long, value_name = "PATH")]
    netns: Option<PathBuf>,
    /// The (static) subzero binary to copy into the jail and run (default: this one).
    #[arg(long, value_name = "PATH")]
    exec_file: Option<PathBuf>,
    /// Resource limits, fsize=SIZE|unlimited and no-file=N (repeatable or
    /// comma-separated; default fsize=unlimited, no-file=2048).
    #[arg(long = "rlimit", value_name = "fsize=SIZE,no-file=N")]
    rlimits: Vec<String>,
    /// The subzero arguments: `run ...`, `demo`, or the API mode's flags.
    #[arg(last = true, required = true, value_name = "SUBZERO ARGS")]
    args: Vec<String>,
}

fn parse_cgroup(s: &str) -> Result<cgroup::Setting, String> {
    cgroup::Setting::parse(s).map_err(|e| e.to_string())
}

/// Builds the jail, runs the VMM in it, and exits with its status.
pub fn run(a: JailArgs) -> anyhow::Result<ExitCode> {
    let mut rlimits = Rlimits::default();
    for r in &a.rlimits {
        rlimits.set(r)?;
    }
    let exec_file = match a.exec_file {
        Some(p) => p,
        None => std::env::current_exe().context("finding this binary (give --exec-file)")?,
    };
    let cfg = JailConfig {
        id: a.id.unwrap_or_else(|| format!("vm-{}", std::process::id())),
        uid: a.uid,
        gid: a.gid,
        chroot_base: a.chroot_base,
        cgroups: a.cgroups,
        netns: a.netns,
        exec_file,
        rlimits,
        args: a.args,
    };
    let p = jail::prepare(&cfg)?;
    eprintln!(
        "subzero jail: root {} for uid {} gid {}",
        p.layout.root.display(),
        cfg.uid,
        cfg.gid
    );
    for f in &p.placed {
        let how = match f.how {
            Placement::Linked => "hard link",
            Placement::Bind => "bind mount",
            Placement::Created => "created by the VMM; the host sees it at",
        };
        let host_side = match f.how {
            Placement::Created => p.layout.host_path(&f.file.inside).display().to_string(),
            _ => f.file.host.display().to_string(),
        };
        eprintln!(
            "subzero jail:   {} {} ({how} {host_side})",
            f.file.flag, f.file.inside
        );
    }
    Ok(ExitCode::from(jail::launch(p)?))
}
