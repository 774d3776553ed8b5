//! What each kind of thread may call. A call not listed for a thread's kind
//! traps. Arguments are checked where a call is dangerous with some values
//! and needed with others: ioctl request numbers (the vCPU may issue only
//! its own KVM ioctls), mmap and mprotect (no executable memory; off the
//! main thread, private anonymous memory only), clone (threads, never
//! processes), socket (Unix sockets only) and prctl.

use std::collections::BTreeMap;

use kvm_bindings::{
    kvm_cpuid2, kvm_debugregs, kvm_fpu, kvm_lapic_state, kvm_mp_state, kvm_msrs, kvm_regs,
    kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, KVMIO,
};
use seccompiler::{
    BackendError, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use vmm_sys_util::ioctl::ioctl_expr;

use super::ThreadKind;

/// The rules of one filter: system call number to the rules, any of which
/// allows the call (no rules: always allowed).
pub type Rules = BTreeMap<i64, Vec<SeccompRule>>;

const NONE: u32 = 0;
const W: u32 = 1;
const R: u32 = 2;

const fn kvm(dir: u32, nr: u32, size: usize) -> u64 {
    ioctl_expr(dir, KVMIO, nr, size as u32) as u64
}

/// The ioctls a vCPU thread makes on its own vCPU fd: running it, and
/// saving and restoring its state for a snapshot.
pub const VCPU_IOCTLS: &[(&str, u64)] = &[
    ("KVM_RUN", kvm(NONE, 0x80, 0)),
    ("KVM_GET_REGS", kvm(R, 0x81, size_of::<kvm_regs>())),
    ("KVM_SET_REGS", kvm(W, 0x82, size_of::<kvm_regs>())),
    ("KVM_GET_SREGS", kvm(R, 0x83, size_of::<kvm_sregs>())),
    ("KVM_SET_SREGS", kvm(W, 0x84, size_of::<kvm_sregs>())),
    ("KVM_GET_MSRS", kvm(R | W, 0x88, size_of::<kvm_msrs>())),
    ("KVM_SET_MSRS", kvm(W, 0x89, size_of::<kvm_msrs>())),
    ("KVM_GET_FPU", kvm(R, 0x8c, size_of::<kvm_fpu>())),
    ("KVM_SET_FPU", kvm(W, 0x8d, size_of::<kvm_fpu>())),
    ("KVM_GET_LAPIC", kvm(R, 0x8e, size_of::<kvm_lapic_state>())),
    ("KVM_SET_LAPIC", kvm(W, 0x8f, size_of::<kvm_lapic_state>())),
    ("KVM_SET_CPUID2", kvm(W, 0x90, size_of::<kvm_cpuid2>())),
    ("KVM_GET_CPUID2", kvm(R | W, 0x91, size_of::<kvm_cpuid2>())),
    ("KVM_GET_MP_STATE", kvm(R, 0x98, size_of::<kvm_mp_state>())),
    ("KVM_SET_MP_STATE", kvm(W, 0x99, size_of::<kvm_mp_state>())),
    (
        "KVM_GET_VCPU_EVENTS",
        kvm(R, 0x9f, size_of::<kvm_vcpu_events>()),
    ),
    (
        "KVM_SET_VCPU_EVENTS",
        kvm(W, 0xa0, size_of::<kvm_vcpu_events>()),
    ),
    (
        "KVM_GET_DEBUGREGS",
        kvm(R, 0xa1, size_of::<kvm_debugregs>()),
    ),
    (
        "KVM_SET_DEBUGREGS",
        kvm(W, 0xa2, size_of::<kvm_debugregs>()),
    ),
    ("KVM_GET_XSAVE", kvm(R, 0xa4, size_of::<kvm_xsave>())),
    ("KVM_SET_XSAVE", kvm(W, 0xa5, size_of::<kvm_xsave>())),
    ("KVM_GET_XCRS", kvm(R, 0xa6, size_of::<kvm_xcrs>())),
    ("KVM_SET_XCRS", kvm(W, 0xa7, size_of::<kvm_xcrs>())),
    ("KVM_KVMCLOCK_CTRL", kvm(NONE, 0xad, 0)),
];

/// TCSETS: every thread may put the terminal back (the panic hook and the
/// SIGSYS handler do, on whichever thread they run).
const TCSETS: u64 = libc::TCSETS;
/// A TAP's receive offloads, set when the guest driver acks its features
/// (on the vCPU thread that wrote the status register).
const TUNSETOFFLOAD: u64 = libc::TUNSETOFFLOAD;
/// A multi-queue TAP's queues, attached and detached as the driver puts
/// queue pairs in use (on activation, reset and control commands).
const TUNSETQUEUE: u64 = libc::TUNSETQUEUE;
/// VFIO's ioctl type, `;`.
const VFIO_TYPE: u64 = b';' as u64;

/// Any VFIO ioctl (container, group and device fds).
fn vfio_type() -> Result<SeccompCondition, BackendError> {
    cond(1, SeccompCmpOp::MaskedEq(0xff00), VFIO_TYPE << 8)
}

/// VM ioctls a vCPU thread makes for a passthrough device.
const PASSTHROUGH_VM_IOCTLS: &[u64] = &[
    kvm(
        W,
        0x46,
        size_of::<kvm_bindings::kvm_userspace_memory_region>(),
    ),
    kvm(W, 0x6a, size_of::<kvm_bindings::kvm_irq_routing>()),
    kvm(W, 0x76, size_of::<kvm_bindings::kvm_irqfd>()),
];

/// The main thread's non-KVM ioctls: terminals, TAPs, non-blocking and
/// close-on-exec flags, a block device's size.
const VMM_IOCTLS: &[u64] = &[
    // PERF_EVENT_IOC_SET_OUTPUT: _IO('$', 5), a vCPU thread joins its
    // tracepoints into one ring (before it enters its own filter).
    0x2405,
    libc::TCGETS,
    libc::TCSETS,
    libc::TIOCGWINSZ,
    libc::FIONBIO,
    libc::FIOCLEX,
    libc::TUNSETIFF,
    libc::TUNGETIFF,
    libc::TUNSETOFFLOAD,
    libc::TUNSETQUEUE,
    libc::TUNSETVNETHDRSZ,
    libc::TUNGETVNETHDRSZ,
    // BLKGETSIZE64: _IOR(0x12, 114, size_t)
    0x8008_1272,
    // BLKSSZGET: _IO(0x12, 104)
    0x1268,
];

/// Calls every thread makes: memory for its allocations, locks, time,
/// logging to descriptors it has, signal returns and its own exit.
const COMMON: &[i64] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_nanosleep,
    libc::SYS_clock_nanosleep,
    libc::SYS_clock_gettime,
    libc::SYS_gettimeofday,
    libc::SYS_munmap,
    libc::SYS_madvise,
    libc::SYS_mremap,
    libc::SYS_brk,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_getrandom,
    libc::SYS_exit,
    libc::SYS_exit_group,
    // abort(), after a panic in a release build.
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_tgkill,
];

/// Calls a thread needs to start threads (besides clone, checked below).
const SPAWN: &[i64] = &[
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_sched_getaffinity,
    libc::SYS_clone3,
];

/// The event loops' epoll calls.
const EPOLL: &[i64] = &[
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
];

/// Serving stream sockets that are already bound.
const SOCKETS: &[i64] = &[
    libc::SYS_accept4,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
    libc::SYS_shutdown,
    libc::SYS_setsockopt,
    libc::SYS_getsockopt,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_fcntl,
];

/// The main thread's own calls: building a VM (files, memory, KVM, TAPs,
/// sockets), taking and loading snapshots, and the event loop.
const VMM: &[i64] = &[
    // KVM's tracepoints, opened by each vCPU thread for itself before it
    // enters its own filter (`--stats`).
    libc::SYS_perf_event_open,
    libc::SYS_openat,
    libc::SYS_open,
    libc::SYS_fstat,
    // A disk image's file system: engine=auto serves one in memory
    // synchronously.
    libc::SYS_fstatfs,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_lseek,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_ftruncate,
    libc::SYS_fallocate,
    libc::SYS_flock,
    // A disk's io_uring engine is set up where the disk is opened.
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_register,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    // The unpacked-kernel cache: its directory, and entries renamed into
    // place.
    libc::SYS_mkdir,
    libc::SYS_mkdirat,
    libc::SYS_rename,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_readlink,
    libc::SYS_readlinkat,
    libc::SYS_getcwd,
    libc::SYS_access,
    libc::SYS_faccessat,
    libc::SYS_faccessat2,
    libc::SYS_getdents64,
    libc::SYS_mknodat,
    libc::SYS_dup,
    libc::SYS_dup3,
    libc::SYS_pipe2,
    libc::SYS_eventfd2,
    libc::SYS_epoll_create1,
    libc::SYS_timerfd_create,
    libc::SYS_timerfd_settime,
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_connect,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
    libc::SYS_socketpair,
    libc::SYS_rt_sigaction,
    libc::SYS_sysinfo,
    libc::SYS_uname,
    libc::SYS_getuid,
    libc::SYS_geteuid,
    libc::SYS_getgid,
    libc::SYS_getegid,
    libc::SYS_prlimit64,
    libc::SYS_getrlimit,
    libc::SYS_kill,
];

fn cond(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, BackendError> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value)
}

fn rule(conditions: Vec<SeccompCondition>) -> Result<SeccompRule, BackendError> {
    SeccompRule::new(conditions)
}

/// ioctl(fd, request) allowed for each request in `requests`.
fn ioctl_rules(requests: impl IntoIterator<Item = u64>) -> Result<Vec<SeccompRule>, BackendError> {
    requests
        .into_iter()
        .map(|r| rule(vec![cond(1, SeccompCmpOp::Eq, r)?]))
        .collect()
}

/// Allows `calls` with any arguments.
fn add(rules: &mut Rules, calls: &[i64]) {
    for &c in calls {
        rules.insert(c, Vec::new());
    }
}

/// Allows `call` when any of `extra` matches (with no rules: always). A
/// call already allowed with any arguments stays so.
fn add_rules(rules: &mut Rules, call: i64, extra: Vec<SeccompRule>) {
    match rules.get_mut(&call) {
        Some(existing) if existing.is_empty() => {}
        Some(existing) if extra.is_empty() => existing.clear(),
        Some(existing) => existing.extend(extra),
        None => {
            rules.insert(call, extra);
        }
    }
}

/// No PROT_EXEC: nothing in Subzero needs new executable memory.
fn not_exec(arg: u8) -> Result<SeccompCondition, BackendError> {
    cond(arg, SeccompCmpOp::MaskedEq(libc::PROT_EXEC as u64), 0)
}

/// The rules every thread shares, plus those of its kind; the calls of a
/// passthrough device only if [`super::allow_passthrough`] was called.
pub fn allowed(kind: ThreadKind) -> Result<Rules, BackendError> {
    allowed_with(kind, super::passthrough_allowed())
}

/// [`allowed`], saying whether the VM has passthrough devices.
pub fn allowed_with(kind: ThreadKind, passthrough: bool) -> Result<Rules, BackendError> {
    let mut rules = Rules::new();
    add(&mut rules, COMMON);
    add_rules(&mut rules, libc::SYS_ioctl, ioctl_rules([TCSETS])?);
    add_rules(
        &mut rules,
        libc::SYS_mprotect,
        vec![rule(vec![not_exec(2)?])?],
    );
    // A device thread puts itself under SCHED_BATCH as it starts (see
    // virtio::worker::set_batch_scheduling), under the filter it inherited:
    // only the calling thread, and only that policy, which can only lower
    // its own priority.
    add_rules(
        &mut rules,
        libc::SYS_sched_setscheduler,
        vec![rule(vec![
            cond(0, SeccompCmpOp::Eq, 0)?,
            cond(1, SeccompCmpOp::Eq, libc::SCHED_BATCH as u64)?,
        ])?],
    );
    // F_GETFD: Rust's standard library checks a descriptor is open before
    // it closes it (in debug builds).
    add_rules(
        &mut rules,
        libc::SYS_fcntl,
        vec![rule(vec![cond(
            1,
            SeccompCmpOp::Eq,
            libc::F_GETFD as u64,
        )?])?],
    );
    // Private anonymous memory (malloc, thread stacks), never executable.
    let anon = libc::MAP_ANONYMOUS | libc::MAP_SHARED;
    add_rules(
        &mut rules,
        libc::SYS_mmap,
        vec![rule(vec![
            not_exec(2)?,
            cond(
                3,
                SeccompCmpOp::MaskedEq(anon as u64),
                libc::MAP_ANONYMOUS as u64,
            )?,
        ])?],
    );
    match kind {
        ThreadKind::Vmm => {
            // Every other kind's rules, since the threads it starts keep its
            // filter under their own.
            for other in ThreadKind::ALL
                .into_iter()
                .filter(|k| *k != ThreadKind::Vmm)
            {
                for (call, r) in allowed_with(other, passthrough)? {
                    add_rules(&mut rules, call, r);
                }
            }
            add(&mut rules, VMM);
            // Guest memory and snapshot files are shared mappings.
            add_rules(&mut rules, libc::SYS_mmap, vec![rule(vec![not_exec(2)?])?]);
            // Every KVM ioctl (system, VM and vCPU fds), and the others listed.
            let kvm_type = cond(1, SeccompCmpOp::MaskedEq(0xff00), (KVMIO as u64) << 8)?;
            let mut ioctls = vec![rule(vec![kvm_type])?];
            if passthrough {
                ioctls.push(rule(vec![vfio_type()?])?);
            }
            ioctls.extend(ioctl_rules(VMM_IOCTLS.iter().copied())?);
            add_rules(&mut rules, libc::SYS_ioctl, ioctls);
        }
        ThreadKind::Vcpu => {
            let mut ioctls = ioctl_rules(VCPU_IOCTLS.iter().map(|(_, nr)| *nr))?;
            ioctls.extend(ioctl_rules([TUNSETOFFLOAD, TUNSETQUEUE])?);
            // A passthrough device's configuration writes, on the vCPU that
            // makes them: a moved BAR moves its KVM memory slot, an MSI-X
            // vector gets its route and irqfd, MSI-X goes on or off in VFIO;
            // its config space and trapped BARs are region reads and writes.
            if passthrough {
                ioctls.extend(ioctl_rules(PASSTHROUGH_VM_IOCTLS.iter().copied())?);
                ioctls.push(rule(vec![vfio_type()?])?);
                add(&mut rules, &[libc::SYS_pread64, libc::SYS_pwrite64]);
            }
            add_rules(&mut rules, libc::SYS_ioctl, ioctls);
            // A driver's status write activates or resets its device on the
            // vCPU thread: virtio-net starts or stops watching its TAP, and
            // virtio-vsock closes its connections, and virtio-blk waits
            // for its io_uring requests in flight.
            add(
                &mut rules,
                &[
                    libc::SYS_epoll_ctl,
                    libc::SYS_shutdown,
                    libc::SYS_io_uring_enter,
                ],
            );
        }
        ThreadKind::Block => {
            add(&mut rules, EPOLL);
            add(
                &mut rules,
                &[
                    libc::SYS_pread64,
                    libc::SYS_pwrite64,
                    libc::SYS_preadv,
                    libc::SYS_pwritev,
                    libc::SYS_preadv2,
                    libc::SYS_pwritev2,
                    libc::SYS_fsync,
                    libc::SYS_fdatasync,
                    libc::SYS_lseek,
                    libc::SYS_fallocate,
                    libc::SYS_timerfd_settime,
                    // The io_uring engine: submissions and waits.
                    libc::SYS_io_uring_enter,
                ],
            );
        }
        ThreadKind::Net => {
            add(&mut rules, EPOLL);
            add(&mut rules, &[libc::SYS_timerfd_settime]);
            add_rules(
                &mut rules,
                libc::SYS_ioctl,
                ioctl_rules([TUNSETOFFLOAD, TUNSETQUEUE])?,
            );
        }
        ThreadKind::Vsock => {
            add(&mut rules, EPOLL);
            add(&mut rules, SOCKETS);
            add(&mut rules, &[libc::SYS_connect]);
            add_rules(&mut rules, libc::SYS_ioctl, ioctl_rules([libc::FIONBIO])?);
        }
        ThreadKind::Rng => add(&mut rules, EPOLL),
        ThreadKind::Api | ThreadKind::Stats => {
            add(&mut rules, SOCKETS);
            add(&mut rules, SPAWN);
            add_rules(&mut rules, libc::SYS_ioctl, ioctl_rules([libc::FIONBIO])?);
            // The stats server reads KVM's binary statistics.
            add(&mut rules, &[libc::SYS_pread64]);
        }
        ThreadKind::Console | ThreadKind::Trace => {
            add(&mut rules, &[libc::SYS_poll, libc::SYS_ppoll])
        }
    }
    if matches!(kind, ThreadKind::Vmm | ThreadKind::Api | ThreadKind::Stats) {
        add_spawn_rules(&mut rules)?;
    }
    if matches!(kind, ThreadKind::Vmm | ThreadKind::Vsock) {
        // Only Unix sockets: vsock's connections to host programs.
        add_rules(
            &mut rules,
            libc::SYS_socket,
            vec![rule(vec![cond(
                0,
                SeccompCmpOp::Eq,
                libc::AF_UNIX as u64,
            )?])?],
        );
    }
    Ok(rules)
}

/// clone for threads only (CLONE_THREAD set, so never a new process), and
/// prctl only to name the new thread. The new thread then adds its own
/// filter under the inherited one, which takes seccomp(2) and
/// PR_SET_NO_NEW_PRIVS: a filter can only take calls away.
fn add_spawn_rules(rules: &mut Rules) -> Result<(), BackendError> {
    add(rules, SPAWN);
    add(rules, &[libc::SYS_seccomp]);
    let thread = libc::CLONE_THREAD as u64;
    add_rules(
        rules,
        libc::SYS_clone,
        vec![rule(vec![cond(
            0,
            SeccompCmpOp::MaskedEq(thread),
            thread,
        )?])?],
    );
    add_rules(
        rules,
        libc::SYS_prctl,
        vec![
            rule(vec![cond(0, SeccompCmpOp::Eq, libc::PR_SET_NAME as u64)?])?,
            rule(vec![cond(
                0,
                SeccompCmpOp::Eq,
                libc::PR_SET_NO_NEW_PRIVS as u64,
            )?])?,
        ],
    );
    Ok(())
}

/// A filter that makes clone3 fail with ENOSYS. clone3 takes its flags in a
/// struct that seccomp cannot read, so it cannot be checked; glibc then
/// falls back to clone, whose flags [`allowed`] checks. Stacked with a
/// kind's filter, which must allow clone3 for this filter's answer to win.
pub fn clone3_fallback(arch: TargetArch) -> SeccompFilter {
    SeccompFilter::new(
        [(libc::SYS_clone3, vec![])].into_iter().collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )
    .expect("Allow and Errno differ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nr(name: &str) -> u64 {
        VCPU_IOCTLS.iter().find(|(n, _)| *n == name).unwrap().1
    }

    #[test]
    fn vcpu_ioctl_numbers_match_the_kernel_headers() {
        // From linux/kvm.h, as strace prints them.
        assert_eq!(nr("KVM_RUN"), 0xae80);
        assert_eq!(nr("KVM_GET_REGS"), 0x8090_ae81);
        assert_eq!(nr("KVM_SET_SREGS"), 0x4138_ae84);
        assert_eq!(nr("KVM_GET_MSRS"), 0xc008_ae88);
        assert_eq!(nr("KVM_SET_LAPIC"), 0x4400_ae8f);
        assert_eq!(nr("KVM_GET_CPUID2"), 0xc008_ae91);
        assert_eq!(nr("KVM_GET_XSAVE"), 0x9000_aea4);
        assert_eq!(nr("KVM_KVMCLOCK_CTRL"), 0xaead);
    }

    #[test]
    fn only_the_main_thread_may_open_files_or_map_shared_memory() {
        for kind in ThreadKind::ALL {
            let rules = allowed(kind).unwrap();
            let opens = rules.contains_key(&libc::SYS_openat);
            assert_eq!(opens, kind == ThreadKind::Vmm, "{kind:?} openat");
            assert!(
                !rules[&libc::SYS_mmap].is_empty(),
                "{kind:?} mmap is checked"
            );
        }
    }

    #[test]
    fn no_thread_may_start_programs_or_trace_them() {
        for kind in ThreadKind::ALL {
            let rules = allowed(kind).unwrap();
            for call in [
                libc::SYS_execve,
                libc::SYS_execveat,
                libc::SYS_fork,
                libc::SYS_vfork,
                libc::SYS_ptrace,
                libc::SYS_process_vm_writev,
                libc::SYS_mount,
                libc::SYS_setuid,
                libc::SYS_init_module,
                libc::SYS_bpf,
            ] {
                assert!(!rules.contains_key(&call), "{kind:?} allows {call}");
            }
            assert!(
                !rules[&libc::SYS_ioctl].is_empty(),
                "{kind:?} ioctl is checked"
            );
        }
    }

    #[test]
    fn only_a_vm_with_passthrough_lets_vcpus_move_slots_and_read_regions() {
        let plain = allowed_with(ThreadKind::Vcpu, false).unwrap();
        let pt = allowed_with(ThreadKind::Vcpu, true).unwrap();
        assert!(!plain.contains_key(&libc::SYS_pread64));
        assert!(pt.contains_key(&libc::SYS_pread64) && pt.contains_key(&libc::SYS_pwrite64));
        let ioctls = |r: &Rules| r[&libc::SYS_ioctl].len();
        assert_eq!(
            ioctls(&pt),
            ioctls(&plain) + PASSTHROUGH_VM_IOCTLS.len() + 1
        );
        let vmm = |p| allowed_with(ThreadKind::Vmm, p).unwrap()[&libc::SYS_ioctl].len();
        assert!(vmm(true) > vmm(false), "VFIO ioctls on the main thread");
    }

    #[test]
    fn the_main_threads_filter_holds_every_other() {
        let vmm = allowed(ThreadKind::Vmm).unwrap();
        for kind in ThreadKind::ALL {
            for call in allowed(kind).unwrap().keys() {
                assert!(vmm.contains_key(call), "{kind:?}'s {call} missing on vmm");
            }
        }
    }
}
