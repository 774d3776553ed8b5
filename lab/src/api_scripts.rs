//! The API scenarios' L1 drivers: shell scripts that L1 runs in place of a
//! single VMM command ([`Scenario::driver`]), because each of these runs
//! several VMM processes and talks to them over their API sockets.
//!
//! - `api` ([`API_DRIVER`]): what a user of Firecracker's API does with
//!   `curl --unix-socket`. It starts `subzero --api-sock /tmp/api.sock --id
//!   lab` in the background (console to `/tmp/api.1.out`), configures the
//!   guest (boot source, machine config, a drive, a network interface on the
//!   TAP `sztap0`, vsock) and starts it; once the guest has written its file
//!   and counts, it pauses the VM, snapshots it, kills subzero with SIGKILL,
//!   starts a new `subzero --api-sock` (console to `/tmp/api.2.out`), loads
//!   the snapshot with `resume_vm`, then opens a new vsock connection
//!   (through subzero's Unix socket and `CONNECT 5000`) and a TCP connection
//!   (over the TAP) to the restored guest's listeners. The guest then re-reads
//!   its file and powers off.
//! - `api-bench` ([`API_BENCH_DRIVER`]): the same steps, timed with
//!   `lab-peer vmm` and `lab-peer http` (curl's own start-up in L1 would be
//!   much of what it measures), for subzero and, when L1 has it, the peer
//!   Firecracker, for 128 and 512 MiB guests.
//!
//! What the drivers print, besides the `@@L1 CHECK` lines of
//! [`crate::scripts`]: `@@L1 STEP <name> <what>` as they go;
//! `@@L1 API <METHOD> <PATH> -> <status> <body>` for each curl request;
//! each VMM's console between `@@L1 CONSOLE <name> <n> begin` and `... end`
//! (after that VMM has ended); and for the benchmark
//! `@@L1 CHECK api-bench SAMPLE <vmm> <MiB> <metric> <value>`. The VMMs'
//! stderr goes to the driver's, prefixed with `subzero <n>: `.

use crate::scripts::{blob_vars, sh_quote, Scenario};

/// The `api` scenario's API socket in L1.
pub const API_SOCK: &str = "/tmp/api.sock";
/// The `api` guest's disk image in L1 (a copy of the block image).
pub const API_IMAGE: &str = "/tmp/api.img";
/// The `api` guest's vsock Unix socket in L1.
pub const API_VSOCK_UDS: &str = "/tmp/api-vsock.sock";
/// The guest's vsock and TCP listener ports in the `api` scenario.
pub const API_VSOCK_PORT: u32 = 5000;
/// See [`API_VSOCK_PORT`].
pub const API_TCP_PORT: u32 = 7000;
/// Why the `api` driver connects to the restored guest's vsock port a
/// second time if the first connection drops: so that the rest of the
/// scenario still runs and the test can name the failure.
pub const VSOCK_RETRY: &str = "A restored virtio-vsock device sends its \
    TRANSPORT_RESET event with an interrupt; if that interrupt is lost (it \
    was, before restore_vm held the device threads until every vCPU had its \
    local APIC back), the guest sees the event only at the next vsock \
    interrupt, the first new connection's, and resets every connected \
    socket, that new one included: its recv fails with ENOTCONN, L1 gets OK \
    and then end of stream. The driver then records VSOCK_FIRST_DROPPED and \
    connects once more (the guest listens twice), and the lab test fails.";
/// Guest RAM sizes the benchmark restores, in MiB.
pub const BENCH_SIZES_MIB: &[u32] = &[128, 512];
/// Restores per VMM and size (the benchmark prints their median).
pub const BENCH_ROUNDS: u32 = 5;

/// Shell helpers every driver has.
const HELPERS: &str = r#"export PATH=/bin:/sbin:/usr/bin:/usr/sbin
# sz_check KEY VALUE...: a fact for the host (`@@L1 CHECK <name> KEY VALUE`).
sz_check() {
    k=$1
    shift
    echo "@@L1 CHECK $name $k $(printf '%s' "$*" | tr '\n' ' ')"
}
# sz_step TEXT: progress on L1's console.
sz_step() { echo "@@L1 STEP $name $* (L1 uptime $(cut -d' ' -f1 /proc/uptime))"; }
# sz_track PID: a process L1's sz_reap stops if the driver did not.
sz_track() { echo "$1" >>/tmp/sz.pids; }
# sz_tracefs: mounts tracefs, for perf's KVM tracepoints, unless it is.
sz_tracefs() {
    grep -q '^[^ ]* /sys/kernel/tracing tracefs ' /proc/mounts || mount -t tracefs none /sys/kernel/tracing
}
# sz_perf_report DATA: perf kvm stat's table of VM exits by reason in the
# recording DATA ($PERF), with perf's exit status.
sz_perf_report() { $PERF --no-pager kvm -i "$1" stat report --event=vmexit --key=sample 2>&1; }
# sz_kill_tree PID: SIGKILL to PID and its descendants.
sz_kill_tree() {
    for c in $(awk -v p=$1 '$4 == p { print $1 }' /proc/[0-9]*/stat 2>/dev/null); do sz_kill_tree $c; done
    kill -9 $1 2>/dev/null
}
# sz_alive PID: the process exists and is not a zombie.
sz_alive() {
    case "$(cut -d' ' -f3 /proc/$1/stat 2>/dev/null)" in "" | Z) return 1 ;; esac
    return 0
}
# sz_wait_for FILE PATTERN SECS: waits for a line of FILE matching the grep
# PATTERN.
sz_wait_for() {
    n=0
    while ! grep -q "$2" "$1" 2>/dev/null; do
        n=$((n + 1))
        [ $n -gt $(($3 * 5)) ] && return 1
        sleep 0.2
    done
}
# sz_console N FILE: VMM N's console (FILE) and its stderr (FILE.err), once.
sz_console() {
    [ -e "$2" ] && [ ! -e "$2.shown" ] || return 0
    touch "$2.shown"
    echo "@@L1 CONSOLE $name $1 begin"
    cat "$2"
    echo
    echo "@@L1 CONSOLE $name $1 end"
    if [ -e "$2.err" ]; then
        while IFS= read -r l || [ -n "$l" ]; do echo "subzero $1: $l" >&2; done <"$2.err"
    fi
}
"#;

/// `cat > /tmp/<name>.sh` of the scenario's driver: the scenario's name,
/// the timeout, its guest settings (`SZ_KERNEL`, `SZ_INITRD`, `SZ_CMDLINE`,
/// `SZ_MEM_MIB`, `SZ_VCPUS`), the payload variables, the helpers, then
/// [`Scenario::driver`].
pub fn driver_file(sc: &Scenario, timeout_secs: u64) -> String {
    let mut s = format!("cat >/tmp/{}.sh <<'SZ_DRIVER_EOF'\n#!/bin/sh\n", sc.name);
    s.push_str(&format!("name={}\n", sc.name));
    s.push_str(&format!("SZ_TIMEOUT={timeout_secs}\n"));
    s.push_str(&format!("SZ_KERNEL={}\n", sh_quote(sc.kernel)));
    s.push_str(&format!("SZ_INITRD={}\n", sh_quote(sc.initrd)));
    s.push_str(&format!("SZ_CMDLINE={}\n", sh_quote(&sc.cmdline())));
    s.push_str(&format!("SZ_MEM_MIB={}\n", sc.memory_mib));
    s.push_str(&format!("SZ_VCPUS={}\n", sc.vcpus));
    s.push_str(&blob_vars());
    s.push_str(HELPERS);
    s.push_str(sc.driver);
    s.push_str("SZ_DRIVER_EOF\n");
    s
}

/// The `api` scenario's L1 side before its driver: the disk image and a
/// persistent TAP with 169.254.0.1/16 (the guest takes .2).
pub const API_BEFORE: &str = r#"cp /l2/block.img /tmp/api.img
rm -f /tmp/api.1.out* /tmp/api.2.out*
tunctl -t sztap0 >/dev/null
ip addr add 169.254.0.1/16 dev sztap0
ip link set sztap0 up
"#;

/// After the driver: stop what it left running, read the guest's file back
/// from the image, clean up.
pub const API_AFTER: &str = r#"sz_reap
sz_inspect /tmp/api.img API_FILE_SHA256 'sha256sum < api.bin | cut -d" " -f1'
rm -f /tmp/api.img /tmp/api.snap /tmp/api.mem /tmp/api.vs.* /tmp/api.tcp.*
tunctl -d sztap0 >/dev/null
"#;

/// The `api` scenario's driver (see the module docs).
pub const API_DRIVER: &str = r#"API_SOCK=/tmp/api.sock
OUT1=/tmp/api.1.out
OUT2=/tmp/api.2.out
pid1=
pid2=
rm -f $API_SOCK /tmp/api.snap /tmp/api.mem /tmp/api-vsock.sock /tmp/api-vsock.sock_*

# sz_api METHOD PATH [JSON]: one request, sent with curl as Firecracker's
# getting-started guide sends them; prints `@@L1 API METHOD PATH -> STATUS
# BODY` and succeeds on a 2xx status.
sz_api() {
    if [ -n "$3" ]; then
        out=$(curl -q -sS --unix-socket $API_SOCK -X "$1" "http://localhost$2" \
            -H 'Accept: application/json' -H 'Content-Type: application/json' \
            -d "$3" -w '\n%{http_code}' 2>&1)
    else
        out=$(curl -q -sS --unix-socket $API_SOCK -X "$1" "http://localhost$2" \
            -H 'Accept: application/json' -w '\n%{http_code}' 2>&1)
    fi
    code=$(printf '%s\n' "$out" | tail -n 1)
    echo "@@L1 API $1 $2 -> $code $(printf '%s\n' "$out" | sed '$d' | tr '\n' ' ')"
    case "$code" in 2??) return 0 ;; esac
    return 1
}
# sz_vsock: one connection to the guest's vsock port 5000 through subzero's
# Unix socket; succeeds when L1 received the guest's whole stream.
sz_vsock() {
    lab-peer gen $SZ_API_VSOCK_HOST |
        lab-peer connect vsock-uds:/tmp/api-vsock.sock:5000 --retry 30 >/tmp/api.vs.bin 2>/tmp/api.vs.err
    [ "$(sha256sum </tmp/api.vs.bin)" = "$(lab-peer gen $SZ_API_VSOCK_GUEST | sha256sum)" ]
}
# sz_api_up: waits up to 20 s for the API socket to answer `GET /`.
sz_api_up() {
    n=0
    until curl -q -s --unix-socket $API_SOCK http://localhost/ >/dev/null 2>&1; do
        n=$((n + 1))
        [ $n -gt 200 ] && return 1
        sleep 0.1
    done
}
# sz_abort WHY: kills both VMMs, shows their consoles, fails.
sz_abort() {
    sz_check FAILED "$*"
    for p in $pid1 $pid2; do kill -9 $p 2>/dev/null; done
    sz_console 1 $OUT1
    sz_console 2 $OUT2
    exit 1
}

sz_step "subzero --api-sock $API_SOCK --id lab, console to $OUT1"
/bin/subzero --api-sock $API_SOCK --id lab </dev/null >$OUT1 2>$OUT1.err &
pid1=$!
sz_track $pid1
sz_api_up || sz_abort "subzero 1 never answered on $API_SOCK"
sz_api GET /
sz_api PUT /boot-source "{\"kernel_image_path\": \"$SZ_KERNEL\", \"boot_args\": \"$SZ_CMDLINE\", \"initrd_path\": \"$SZ_INITRD\"}" ||
    sz_abort "PUT /boot-source"
sz_api PUT /machine-config "{\"vcpu_count\": $SZ_VCPUS, \"mem_size_mib\": $SZ_MEM_MIB}" ||
    sz_abort "PUT /machine-config"
sz_api PUT /drives/disk0 '{"drive_id": "disk0", "path_on_host": "/tmp/api.img", "is_root_device": false, "is_read_only": false}' ||
    sz_abort "PUT /drives/disk0"
sz_api PUT /network-interfaces/eth0 '{"iface_id": "eth0", "host_dev_name": "sztap0", "guest_mac": "52:54:00:12:34:56"}' ||
    sz_abort "PUT /network-interfaces/eth0"
sz_api PUT /vsock '{"guest_cid": 3, "uds_path": "/tmp/api-vsock.sock"}' || sz_abort "PUT /vsock"
sz_api PUT /actions '{"action_type": "InstanceStart"}' || sz_abort "InstanceStart"
sz_api GET /

sz_step "waiting for the guest's READY and counter"
sz_wait_for $OUT1 '@@L2 READY' 150 || sz_abort "the guest never printed READY"
sz_wait_for $OUT1 '@@L2 COUNT 5 ' 30 || sz_abort "the guest's counter did not reach 5"
sz_api PATCH /vm '{"state": "Paused"}' || sz_abort "PATCH /vm Paused"
a=$(stat -c %s $OUT1)
sz_api GET /
sleep 1
sz_check PAUSED_CONSOLE_BYTES $(($(stat -c %s $OUT1) - a))
sz_api PUT /snapshot/create '{"snapshot_path": "/tmp/api.snap", "mem_file_path": "/tmp/api.mem"}' ||
    sz_abort "PUT /snapshot/create"
sz_check SNAPSHOT_BYTES "$(stat -c %s /tmp/api.snap)"
sz_check MEM_BYTES "$(stat -c %s /tmp/api.mem)"
# A second snapshot to the same files is refused: no overwrite unless asked.
sz_api PUT /snapshot/create '{"snapshot_path": "/tmp/api.snap", "mem_file_path": "/tmp/api.mem"}'
sz_step "kill -9 subzero 1 (pid $pid1)"
kill -9 $pid1
wait $pid1 2>/dev/null
sz_check KILL_RC $?
sz_console 1 $OUT1

sz_step "a new subzero --api-sock, console to $OUT2; PUT /snapshot/load"
/bin/subzero --api-sock $API_SOCK --id lab-restored </dev/null >$OUT2 2>$OUT2.err &
pid2=$!
sz_track $pid2
sz_api_up || sz_abort "subzero 2 never answered on $API_SOCK"
sz_api GET /
sz_api PUT /snapshot/load '{"snapshot_path": "/tmp/api.snap", "mem_backend": {"backend_type": "File", "backend_path": "/tmp/api.mem"}, "resume_vm": true}' ||
    sz_abort "PUT /snapshot/load"
sz_api GET /
sz_api GET /vm/config
sz_wait_for $OUT2 '@@L2 COUNT [0-9]* boot_id=' 60 || sz_abort "no counter line after the restore"

sz_step "a new vsock connection: CONNECT 5000 on /tmp/api-vsock.sock"
if ! sz_vsock; then
    # The guest dropped the first connection after the restore (see
    # VSOCK_RETRY in lab/src/api_scripts.rs): record it, for the test to
    # fail on, and connect once more so the rest of the scenario runs.
    sz_check VSOCK_FIRST_DROPPED "$(cat /tmp/api.vs.err)"
    sz_step "the guest dropped that connection (a bug: see VSOCK_RETRY); CONNECT 5000 once more"
    sleep 1
    sz_vsock
fi
sz_check VSOCK_OK "$(grep '^lab-peer: OK' /tmp/api.vs.err)"
sz_check VSOCK_SHA256 "$(sha256sum </tmp/api.vs.bin | cut -d' ' -f1)"
sz_check VSOCK_LOG "$(cat /tmp/api.vs.err)"
sz_step "a TCP connection to 169.254.0.2:7000 over sztap0"
lab-peer gen $SZ_API_TCP_HOST | lab-peer connect tcp:169.254.0.2:7000 --retry 30 >/tmp/api.tcp.bin 2>/tmp/api.tcp.err
sz_check TCP_SHA256 "$(sha256sum </tmp/api.tcp.bin | cut -d' ' -f1)"
sz_check TCP_LOG "$(cat /tmp/api.tcp.err)"

sz_step "waiting for the guest to power off"
n=0
while sz_alive $pid2 && [ $n -lt 300 ]; do
    sleep 0.2
    n=$((n + 1))
done
if sz_alive $pid2; then
    sz_check POWEROFF "subzero 2 still ran 60 s after the connections: killed"
    kill -9 $pid2
fi
wait $pid2
rc=$?
sz_console 2 $OUT2
exit $rc
"#;

/// The benchmark's driver (see the module docs). Per size: each VMM boots
/// the guest through its API and snapshots it three times (resuming in
/// between; the order of the VMMs alternates between sizes), then
/// [`BENCH_ROUNDS`] rounds restore the first snapshot in a fresh process
/// (the order alternating between rounds).
pub const API_BENCH_DRIVER: &str = r#"B=/tmp/bench
SOCK=/tmp/bench.sock
FC=/usr/bin/firecracker
vmms=subzero
if [ -x $FC ]; then
    vmms="subzero firecracker"
    sz_check FIRECRACKER "$($FC --version 2>/dev/null | head -n 1)"
else
    sz_check FIRECRACKER "not in L1: subzero only"
fi
pid=

# sample METRIC VALUE: one measurement of $vmm with $mib MiB.
sample() { echo "@@L1 CHECK $name SAMPLE $vmm $mib $1 ${2:--}"; }
# swap A B: B A.
swap() {
    r=
    for w in "$@"; do r="$w $r"; done
    echo $r
}
# bench_start: starts $vmm with its API on $SOCK (console $B.out), times
# spawn -> `GET /` answered.
bench_start() {
    rm -f $SOCK
    case $vmm in
    subzero) set -- /bin/subzero --api-sock $SOCK --id bench ;;
    firecracker) set -- $FC --api-sock $SOCK --id bench --no-seccomp --level Warning ;;
    esac
    if ! r=$(lab-peer vmm $B.out $SOCK -- "$@" 2>$B.vmm.err); then
        sz_check ERROR "$vmm ${mib} MiB: $(cat $B.vmm.err $B.out.err 2>/dev/null)"
        return 1
    fi
    pid=${r% *}
    sz_track $pid
    sample api_ready_s ${r#* }
}
# req METHOD PATH [BODY [--watch FILE]]: one timed request; sets $took and
# $grew (seconds).
req() {
    lab-peer http $SOCK "$@" >$B.body 2>$B.req.err
    rc=$?
    took=$(sed -n 's/.*: status [0-9]* in \([0-9.]*\)s.*/\1/p' $B.req.err)
    grew=$(sed -n 's/.* grew after \([0-9.]*\)s.*/\1/p' $B.req.err)
    [ $rc = 0 ] || sz_check ERROR "$vmm ${mib} MiB: $1 $2: $(cat $B.body $B.req.err | tr '\n' ' ')"
    return $rc
}
bench_kill() {
    kill -9 $pid 2>/dev/null
    n=0
    while sz_alive $pid && [ $n -lt 100 ]; do
        sleep 0.1
        n=$((n + 1))
    done
}
# bench_boot: boot, wait for the guest's ticks, pause, snapshot, kill.
bench_boot() {
    sz_step "$vmm ${mib} MiB: boot through the API, pause, snapshot"
    snap=$B.$vmm.$mib
    bench_start || return 1
    if ! { req PUT /boot-source "{\"kernel_image_path\": \"$SZ_KERNEL\", \"boot_args\": \"$SZ_CMDLINE\", \"initrd_path\": \"$SZ_INITRD\"}" &&
        req PUT /machine-config "{\"vcpu_count\": 1, \"mem_size_mib\": $mib}" &&
        req PUT /actions '{"action_type": "InstanceStart"}'; }; then
        bench_kill
        return 1
    fi
    if ! sz_wait_for $B.out '@@L2 TICK 5' 180; then
        sz_check ERROR "$vmm ${mib} MiB: no ticks: $(tail -c 300 $B.out | tr '\n' ' ')"
        bench_kill
        return 1
    fi
    if req PATCH /vm '{"state": "Paused"}' &&
        req PUT /snapshot/create "{\"snapshot_path\": \"$snap.state\", \"mem_file_path\": \"$snap.mem\"}"; then
        sample create_s $took
        sample state_bytes $(stat -c %s $snap.state)
        sample mem_bytes $(stat -c %s $snap.mem)
        sample mem_allocated_kib $(du -k $snap.mem | cut -f1)
        # More create samples: resume, pause, snapshot to other files.
        for again in 2 3; do
            req PATCH /vm '{"state": "Resumed"}' || break
            sleep 0.5
            req PATCH /vm '{"state": "Paused"}' || break
            req PUT /snapshot/create "{\"snapshot_path\": \"$snap.$again.state\", \"mem_file_path\": \"$snap.$again.mem\"}" &&
                sample create_s $took
            rm -f $snap.$again.state $snap.$again.mem
        done
    fi
    bench_kill
}
# bench_restore: a fresh VMM loads and resumes the snapshot; times the
# request and the guest's first console output after it.
bench_restore() {
    snap=$B.$vmm.$mib
    [ -e $snap.state ] || return 1
    sz_step "$vmm ${mib} MiB: restore, round $round"
    bench_start || return 1
    if req PUT /snapshot/load "{\"snapshot_path\": \"$snap.state\", \"mem_backend\": {\"backend_type\": \"File\", \"backend_path\": \"$snap.mem\"}, \"resume_vm\": true}" --watch $B.out; then
        sample restore_s $took
        sample first_output_s $grew
        if sz_wait_for $B.out '@@L2 TICK' 10; then
            sample ticks_after_restore "$(grep -c '@@L2 TICK' $B.out)"
        else
            sz_check ERROR "$vmm ${mib} MiB: no tick after the restore"
        fi
    fi
    bench_kill
}

order=$vmms
for mib in 128 512; do
    for vmm in $order; do bench_boot; done
    for round in 1 2 3 4 5; do
        for vmm in $order; do bench_restore; done
        order=$(swap $order)
    done
    rm -f $B.*.$mib.state $B.*.$mib.mem
done
sz_step "done"
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scripts::{l1_init, SCENARIOS};

    fn scenario(name: &str) -> &'static Scenario {
        SCENARIOS.iter().find(|s| s.name == name).unwrap()
    }

    #[test]
    fn the_helpers_mount_tracefs_and_read_perf_kvm_stat() {
        assert!(HELPERS.contains(
            "grep -q '^[^ ]* /sys/kernel/tracing tracefs ' /proc/mounts || mount -t tracefs none /sys/kernel/tracing\n"
        ));
        assert!(HELPERS.contains(
            "$PERF --no-pager kvm -i \"$1\" stat report --event=vmexit --key=sample 2>&1;"
        ));
    }

    #[test]
    fn the_api_driver_is_written_before_it_runs_with_the_guest_settings() {
        let sc = scenario("api");
        assert!(!sc.opt_in && sc.assets.contains(&crate::scripts::Asset::Curl));
        let s = l1_init(&[*sc], &[], "sz-abc", 60, None);
        let file = s.find("cat >/tmp/api.sh <<'SZ_DRIVER_EOF'\n").unwrap();
        let end = s[file..].find("\nSZ_DRIVER_EOF\n").unwrap() + file;
        let run = s
            .find("sz_run api plain '/bin/sh' '/tmp/api.sh'\n")
            .unwrap();
        assert!(file < end && end < run);
        let driver = &s[file..end];
        assert!(driver.contains("\nname=api\nSZ_TIMEOUT=300\n"));
        assert!(driver.contains("SZ_CMDLINE='console=ttyS0 quiet panic=-1 sz_scenario=api'\n"));
        assert!(driver.contains("SZ_MEM_MIB=256\n"));
        assert!(driver.contains("SZ_API_VSOCK_HOST='1009 262144'\n"));
        // The TAP and the image are ready before; the image is checked after.
        let tap = s.find("tunctl -t sztap0").unwrap();
        let inspect = s.find("sz_inspect /tmp/api.img API_FILE_SHA256").unwrap();
        assert!(tap < run && run < inspect);
        // The scenario's longer timeout, then the default again.
        assert!(s[..run].contains("SZ_TIMEOUT=300\n"));
        assert!(s[run..].contains("SZ_TIMEOUT=60\n"));
    }

    #[test]
    fn the_api_driver_configures_boots_snapshots_kills_and_restores_in_order() {
        let d = API_DRIVER;
        let at = |needle: &str| {
            d.find(needle)
                .unwrap_or_else(|| panic!("the api driver lacks {needle:?}"))
        };
        let steps = [
            "/bin/subzero --api-sock $API_SOCK --id lab </dev/null >$OUT1",
            "sz_api PUT /boot-source \"{\\\"kernel_image_path\\\": \\\"$SZ_KERNEL\\\", \\\"boot_args\\\": \\\"$SZ_CMDLINE\\\", \\\"initrd_path\\\": \\\"$SZ_INITRD\\\"}\"",
            "sz_api PUT /machine-config \"{\\\"vcpu_count\\\": $SZ_VCPUS, \\\"mem_size_mib\\\": $SZ_MEM_MIB}\"",
            "sz_api PUT /drives/disk0 '{\"drive_id\": \"disk0\", \"path_on_host\": \"/tmp/api.img\"",
            "sz_api PUT /network-interfaces/eth0 '{\"iface_id\": \"eth0\", \"host_dev_name\": \"sztap0\"",
            "sz_api PUT /vsock '{\"guest_cid\": 3, \"uds_path\": \"/tmp/api-vsock.sock\"}'",
            "sz_api PUT /actions '{\"action_type\": \"InstanceStart\"}'",
            "sz_api PATCH /vm '{\"state\": \"Paused\"}'",
            "sz_api PUT /snapshot/create '{\"snapshot_path\": \"/tmp/api.snap\", \"mem_file_path\": \"/tmp/api.mem\"}'",
            "kill -9 $pid1",
            "/bin/subzero --api-sock $API_SOCK --id lab-restored </dev/null >$OUT2",
            "sz_api PUT /snapshot/load '{\"snapshot_path\": \"/tmp/api.snap\", \"mem_backend\": {\"backend_type\": \"File\", \"backend_path\": \"/tmp/api.mem\"}, \"resume_vm\": true}'",
            "if ! sz_vsock; then",
            "lab-peer connect tcp:169.254.0.2:7000",
            "rc=$?\nsz_console 2 $OUT2",
        ];
        let positions: Vec<usize> = steps.iter().map(|s| at(s)).collect();
        assert!(
            positions.windows(2).all(|w| w[0] < w[1]),
            "steps out of order: {positions:?}"
        );
        assert!(d.contains("curl -q -sS --unix-socket $API_SOCK -X \"$1\" \"http://localhost$2\""));
        assert!(d.ends_with("exit $rc\n"));
    }

    #[test]
    fn the_drivers_and_l1_init_are_valid_busybox_sh() {
        let Ok(bb) = std::fs::metadata("/bin/busybox") else {
            eprintln!("no /bin/busybox: skipped");
            return;
        };
        assert!(bb.is_file());
        let init = l1_init(SCENARIOS, &[], "sz-abc", 60, Some(4));
        let mut scripts = vec![
            ("l1-init".to_string(), init),
            ("l2-init".to_string(), crate::scripts::l2_init(&[])),
        ];
        for sc in SCENARIOS.iter().filter(|s| !s.driver.is_empty()) {
            // The file's contents: what is between the heredoc's lines.
            let f = driver_file(sc, 60);
            let body = f.split_once('\n').unwrap().1;
            let body = body.strip_suffix("SZ_DRIVER_EOF\n").unwrap();
            scripts.push((sc.name.to_string(), body.to_string()));
        }
        for (name, text) in scripts {
            let path = std::env::temp_dir().join(format!("sz-{name}-{}.sh", std::process::id()));
            std::fs::write(&path, &text).unwrap();
            let out = std::process::Command::new("/bin/busybox")
                .args(["sh", "-n"])
                .arg(&path)
                .output()
                .unwrap();
            let _ = std::fs::remove_file(&path);
            assert!(
                out.status.success(),
                "{name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    #[test]
    fn the_bench_driver_times_both_vmms_with_alternating_order() {
        let sc = scenario("api-bench");
        assert!(sc.opt_in && sc.min_timeout >= 600);
        let d = driver_file(sc, sc.min_timeout);
        assert!(d.contains("SZ_CMDLINE='console=ttyS0 quiet panic=-1 sz_scenario=api-bench'\n"));
        assert!(d.contains("$FC --api-sock $SOCK --id bench --no-seccomp"));
        assert!(d.contains("lab-peer vmm $B.out $SOCK -- \"$@\""));
        assert!(d.contains("--watch $B.out"));
        let sizes: Vec<String> = BENCH_SIZES_MIB.iter().map(|m| m.to_string()).collect();
        assert!(d.contains(&format!("for mib in {}; do", sizes.join(" "))));
        let rounds: Vec<String> = (1..=BENCH_ROUNDS).map(|r| r.to_string()).collect();
        assert!(d.contains(&format!("for round in {}; do", rounds.join(" "))));
        assert!(d.contains("order=$(swap $order)"));
        for m in [
            "api_ready_s",
            "create_s",
            "state_bytes",
            "mem_bytes",
            "restore_s",
            "first_output_s",
        ] {
            assert!(d.contains(&format!("sample {m} ")), "no {m} sample");
        }
    }
}
