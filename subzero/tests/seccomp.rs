//! Subzero's seccomp filters, in a child process of this test: a filtered
//! thread makes a call its filter forbids, and the process must end with
//! status 148 and a message naming the thread, its filter and the call.
//! Needs no privileges and no /dev/kvm.

use std::process::Command;

use subzero::seccomp::{self, ThreadKind, EXIT_BAD_SYSCALL};

/// Set in the child: which case it runs.
const CASE: &str = "SUBZERO_SECCOMP_CASE";

/// Runs `case` in a child process; its exit status and stderr.
fn run_case(case: &str) -> (Option<i32>, String) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child", "--nocapture", "--test-threads=1"])
        .env(CASE, case)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `work` on a thread called `name` confined as `kind`.
fn confined(name: &str, kind: ThreadKind, work: impl FnOnce() + Send + 'static) {
    seccomp::install().unwrap();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            seccomp::enter(kind).unwrap();
            work();
        })
        .unwrap()
        .join()
        .unwrap();
}

/// ioctl(-1, request): EBADF when the filter allows it.
fn ioctl(request: u64) -> i32 {
    // SAFETY: an ioctl on an invalid descriptor touches no memory.
    let rc = unsafe { libc::ioctl(-1, request as libc::c_ulong) };
    assert_eq!(rc, -1);
    std::io::Error::last_os_error().raw_os_error().unwrap()
}

/// The child: does nothing unless run by [`run_case`].
#[test]
fn child() {
    let Ok(case) = std::env::var(CASE) else {
        return;
    };
    match case.as_str() {
        "vcpu-socket" => confined("vcpu0", ThreadKind::Vcpu, || {
            // Its own ioctls are allowed, and fail only for the bad fd.
            assert_eq!(ioctl(0xae80), libc::EBADF, "KVM_RUN");
            // SAFETY: socket takes no pointers.
            unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        }),
        "vcpu-tun-ioctl" => confined("vcpu1", ThreadKind::Vcpu, || {
            ioctl(libc::TUNSETIFF);
        }),
        "block-open" => confined("virtio-blk0", ThreadKind::Block, || {
            let _ = std::fs::File::open("/etc/hostname");
        }),
        "net-exec-memory" => confined("virtio-net0", ThreadKind::Net, || {
            // SAFETY: maps fresh anonymous memory; never used.
            unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    4096,
                    libc::PROT_READ | libc::PROT_EXEC,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
        }),
        "api-fork" => confined("api", ThreadKind::Api, || {
            // Threads may be started (clone3 fails with ENOSYS, and glibc
            // falls back to clone with CLONE_THREAD)...
            std::thread::spawn(|| 7).join().unwrap();
            // ...processes may not.
            // SAFETY: the child, if there were one, would only _exit.
            if unsafe { libc::fork() } == 0 {
                // SAFETY: _exit in the forked child.
                unsafe { libc::_exit(0) };
            }
        }),
        other => panic!("unknown case {other}"),
    }
    eprintln!("the forbidden call was allowed");
    std::process::exit(0);
}

fn assert_trapped(case: &str, thread: &str, filter: &str, call: &str) {
    let (code, stderr) = run_case(case);
    assert_eq!(code, Some(EXIT_BAD_SYSCALL), "{case}: {stderr}");
    let line = format!(
        "thread '{thread}' ({filter} filter) made a system call its filter forbids: {call} (#"
    );
    assert!(
        stderr.contains(&line),
        "{case}: wanted {line:?} in: {stderr}"
    );
    assert!(stderr.contains("--no-seccomp"), "{stderr}");
}

#[test]
fn a_vcpu_thread_may_run_kvm_but_not_open_sockets() {
    assert_trapped("vcpu-socket", "vcpu0", "vcpu", "socket");
}

#[test]
fn a_vcpu_thread_may_not_configure_a_tap() {
    assert_trapped("vcpu-tun-ioctl", "vcpu1", "vcpu", "ioctl");
}

#[test]
fn a_disk_thread_may_not_open_files() {
    assert_trapped("block-open", "virtio-blk0", "virtio-blk", "openat");
}

#[test]
fn a_net_thread_may_not_map_executable_memory() {
    assert_trapped("net-exec-memory", "virtio-net0", "virtio-net", "mmap");
}

#[test]
fn the_api_thread_may_start_threads_but_not_processes() {
    assert_trapped("api-fork", "api", "api", "clone");
}
