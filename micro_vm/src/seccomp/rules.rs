//! The allowlists, one per [`ThreadRole`]: what each kind of thread calls once it runs under
//! its filter, grouped by purpose.
//!
//! To add a call: put it in the group of the role whose code makes it (in `common` only if
//! every role makes it), with an argument check when an argument decides what the call can
//! do, and say why in the group's comment. `docs/sandbox.md` lists the same groups.

use std::collections::BTreeMap;
use std::mem::size_of;

use kvm_bindings::kvm_regs;
use seccompiler::{BackendError, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule};
use util::io_uring::sys::{
    IORING_REGISTER_BUFFERS, IORING_REGISTER_ENABLE_RINGS, IORING_REGISTER_EVENTFD,
    IORING_REGISTER_PROBE, IORING_REGISTER_RESTRICTIONS,
};
use util::timer::{TIMER_CLOCK, TIMER_FLAGS};
use vmm_sys_util::ioctl::{ioctl_expr, _IOC_NONE, _IOC_READ};

use super::{names, ThreadRole};

/// KVM's ioctl type.
const KVMIO: u32 = 0xAE;
/// `KVM_RUN` (vCPU fd).
pub(super) const KVM_RUN: u64 = ioctl_expr(_IOC_NONE, KVMIO, 0x80, 0) as u64;
/// `KVM_GET_REGS` (vCPU fd): the guest RIP in a vCPU's last log line.
pub(super) const KVM_GET_REGS: u64 =
    ioctl_expr(_IOC_READ, KVMIO, 0x81, size_of::<kvm_regs>() as u32) as u64;

/// A condition on one argument of a call.
#[derive(Clone, Copy)]
struct Arg {
    index: u8,
    op: ArgOp,
}

#[derive(Clone, Copy)]
enum ArgOp {
    /// The argument's low 32 bits equal the value.
    Eq(u64),
    /// None of the mask's bits are set in the argument's low 32 bits.
    Clear(u64),
}

/// Argument `index` (from 0) equals `value` (compared as 32 bits: every argument checked here
/// is an `int` or `unsigned int` in the kernel's prototype).
fn arg(index: u8, value: impl Into<u64>) -> Arg {
    Arg {
        index,
        op: ArgOp::Eq(value.into()),
    }
}

/// Argument `index` has none of `mask`'s bits set.
fn clear(index: u8, mask: impl Into<u64>) -> Arg {
    Arg {
        index,
        op: ArgOp::Clear(mask.into()),
    }
}

/// The calls one role may make: a call maps to `None` (any arguments) or to the rules of which
/// one must match (each a list of argument conditions that must all hold).
#[derive(Default)]
struct Allowlist(BTreeMap<i64, Option<Vec<Vec<Arg>>>>);

impl Allowlist {
    /// Allows `calls` with any arguments.
    fn any(&mut self, calls: &[libc::c_long]) -> &mut Self {
        for &call in calls {
            self.0.insert(call, None);
        }
        self
    }

    /// Allows `call` when every condition of `rule` holds (in addition to its other rules).
    fn when(&mut self, call: libc::c_long, rule: &[Arg]) -> &mut Self {
        match self.0.entry(call).or_insert_with(|| Some(Vec::new())) {
            None => {}
            Some(rules) => rules.push(rule.to_vec()),
        }
        self
    }

    /// Allows `call` when argument `index` is one of `values`.
    fn when_arg_in(&mut self, call: libc::c_long, index: u8, values: &[u64]) -> &mut Self {
        for &value in values {
            self.when(call, &[arg(index, value)]);
        }
        self
    }
}

/// What every thread calls: memory, locks, time, signal returns, its own end.
fn common(list: &mut Allowlist) {
    // Allocation (malloc's heap and mappings, freed thread stacks): never executable memory.
    list.any(&[
        libc::SYS_brk,
        libc::SYS_munmap,
        libc::SYS_mremap,
        libc::SYS_madvise,
    ])
    .when(libc::SYS_mmap, &[clear(2, libc::PROT_EXEC as u64)])
    .when(libc::SYS_mprotect, &[clear(2, libc::PROT_EXEC as u64)]);
    // Locks and condition variables (timed waits included); the clock (normally read without
    // a system call, through the vDSO).
    list.any(&[libc::SYS_futex, libc::SYS_clock_gettime]);
    // Eventfds, the log and the console: read and write; every dropped descriptor: close
    // (debug builds of the standard library check a descriptor with F_GETFD first).
    list.any(&[libc::SYS_read, libc::SYS_write, libc::SYS_close])
        .when(libc::SYS_fcntl, &[arg(1, libc::F_GETFD as u32)]);
    // Signal handlers return (the vCPU kick); a thread's end restores its signal stack;
    // `abort` and the vCPU kick signal threads of this process only.
    list.any(&[
        libc::SYS_rt_sigreturn,
        libc::SYS_rt_sigprocmask,
        libc::SYS_sigaltstack,
        libc::SYS_getpid,
        libc::SYS_gettid,
    ])
    .when(libc::SYS_tgkill, &[arg(0, std::process::id())]);
    // Hash maps seed themselves from the kernel's random bytes.
    list.any(&[libc::SYS_getrandom]);
    // A thread ends; a fatal error ends the process from any thread.
    list.any(&[libc::SYS_exit, libc::SYS_exit_group]);
}

/// What a device's event loop calls (an iothread's, and the main loop's for devices without
/// `iothread=`): the loop itself, the engines serving requests, backends closing there.
fn device_loop(list: &mut Allowlist) {
    // The epoll loop; handlers come and go as devices are activated and reset.
    list.any(&[libc::SYS_epoll_wait, libc::SYS_epoll_ctl]);
    // Timers the loop waits for (a queue's I/O limits, made when it is activated; the
    // virtio-rng rate limit): created non-blocking on the monotonic clock in one call, armed
    // with a relative time, read with `read`.
    list.when(
        libc::SYS_timerfd_create,
        &[arg(0, TIMER_CLOCK as u32), arg(1, TIMER_FLAGS as u32)],
    )
    .when(libc::SYS_timerfd_settime, &[arg(1, 0u32)]);
    // aio=io_uring: submissions and completions; a ring is enabled (and the guest RAM of
    // -mem-prealloc registered) on the thread that serves it.
    list.any(&[libc::SYS_io_uring_enter]).when_arg_in(
        libc::SYS_io_uring_register,
        1,
        &[
            u64::from(IORING_REGISTER_ENABLE_RINGS),
            u64::from(IORING_REGISTER_BUFFERS),
        ],
    );
    // aio=native: submissions, completions, and the context's end with its backend.
    list.any(&[
        libc::SYS_io_submit,
        libc::SYS_io_getevents,
        libc::SYS_io_destroy,
    ]);
    // aio=off (every request inline), and the flush of a backend that closes.
    file_io(list);
}

/// The system calls of one request run to its end (`aio=off` inline, `aio=threads` on a
/// worker): reads, writes, flushes, discards and write-zeroes; a short read asks where the
/// file ends (`SEEK_END`: the engines use positional I/O only, so the offset is never used).
fn file_io(list: &mut Allowlist) {
    list.any(&[
        libc::SYS_preadv,
        libc::SYS_pwritev,
        libc::SYS_fdatasync,
        libc::SYS_fallocate,
    ])
    .when(libc::SYS_lseek, &[arg(2, libc::SEEK_END as u32)]);
}

/// What an `aio=threads` worker calls beyond [`common`]: its requests' system calls; it tells
/// the device's thread with an eventfd `write` and waits for work in `futex`.
fn aio_worker(list: &mut Allowlist) {
    file_io(list);
}

/// The rules of `role`, in `seccompiler`'s form.
pub(super) fn rules(role: ThreadRole) -> Result<BTreeMap<i64, Vec<SeccompRule>>, BackendError> {
    let mut out = BTreeMap::new();
    // Passed on to the filter that refuses them: a trap would come with every signal blocked.
    for call in REFUSED {
        out.insert(call, Vec::new());
    }
    for (call, rules) in allowlist(role).0 {
        let rules = match rules {
            None => Vec::new(),
            Some(rules) => rules
                .iter()
                .map(|rule| {
                    let conditions = rule
                        .iter()
                        .map(|a| {
                            let (op, value) = match a.op {
                                ArgOp::Eq(value) => (SeccompCmpOp::Eq, value),
                                ArgOp::Clear(mask) => (SeccompCmpOp::MaskedEq(mask), 0),
                            };
                            SeccompCondition::new(a.index, SeccompCmpArgLen::Dword, op, value)
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    SeccompRule::new(conditions)
                })
                .collect::<Result<Vec<_>, _>>()?,
        };
        out.insert(call, rules);
    }
    Ok(out)
}

/// The calls that start threads and processes: every role's allowlist passes them on to the
/// thread-start filters, which answer them with an error or let them through (see the module
/// documentation of `seccomp`).
pub(super) const REFUSED: [libc::c_long; 2] = [libc::SYS_clone, libc::SYS_clone3];

/// The flags of `clone` when glibc's `pthread_create` starts a thread: the one `clone` the main
/// thread may make (a process, `vfork` or `fork`, always has other flags).
pub const THREAD_CLONE_FLAGS: u64 = (libc::CLONE_VM
    | libc::CLONE_FS
    | libc::CLONE_FILES
    | libc::CLONE_SIGHAND
    | libc::CLONE_THREAD
    | libc::CLONE_SYSVSEM
    | libc::CLONE_SETTLS
    | libc::CLONE_PARENT_SETTID
    | libc::CLONE_CHILD_CLEARTID) as u64;

/// A thread-start filter: the calls it matches and the error they get; every other call passes.
pub(super) struct ThreadStartFilter {
    pub(super) rules: BTreeMap<i64, Vec<SeccompRule>>,
    pub(super) errno: i32,
}

/// The thread-start filters of `role`, installed before its allowlist.
///
/// - vcpu, iothread, aio-worker: `clone` and `clone3` fail with `EPERM`.
/// - main: `clone3` fails with `ENOSYS`, so glibc's `pthread_create` falls back to `clone`;
///   `clone` fails with `EPERM` unless its flags are exactly [`THREAD_CLONE_FLAGS`]. So the
///   main thread can start an `aio=threads` engine's workers for a drive QMP opens, and no
///   thread can start a process.
pub(super) fn thread_start_filters(
    role: ThreadRole,
) -> Result<Vec<ThreadStartFilter>, BackendError> {
    let all = |calls: &[libc::c_long]| calls.iter().map(|&c| (c, Vec::new())).collect();
    Ok(match role {
        ThreadRole::Main => vec![
            ThreadStartFilter {
                rules: all(&[libc::SYS_clone3]),
                errno: libc::ENOSYS,
            },
            ThreadStartFilter {
                rules: [(
                    libc::SYS_clone,
                    vec![SeccompRule::new(vec![SeccompCondition::new(
                        0,
                        SeccompCmpArgLen::Qword,
                        SeccompCmpOp::Ne,
                        THREAD_CLONE_FLAGS,
                    )?])?],
                )]
                .into_iter()
                .collect(),
                errno: libc::EPERM,
            },
        ],
        ThreadRole::Vcpu | ThreadRole::Iothread | ThreadRole::AioWorker => {
            vec![ThreadStartFilter {
                rules: all(&REFUSED),
                errno: libc::EPERM,
            }]
        }
    })
}

/// The names of the calls the thread-start filters decide (starting a thread or a process).
pub fn refused_syscalls() -> Vec<&'static str> {
    REFUSED
        .iter()
        .map(|&call| names::name(call as i32).unwrap_or("?"))
        .collect()
}

/// The allowlist of `role`.
fn allowlist(role: ThreadRole) -> Allowlist {
    let mut list = Allowlist::default();
    common(&mut list);
    match role {
        ThreadRole::Vcpu => vcpu(&mut list),
        ThreadRole::Iothread => device_loop(&mut list),
        ThreadRole::AioWorker => aio_worker(&mut list),
        ThreadRole::Main => {
            device_loop(&mut list);
            main(&mut list);
        }
    }
    list
}

/// What a vCPU thread calls beyond [`common`]: `KVM_RUN`, and the registers for its last log
/// line. Port and MMIO exits end in the buses, which only post messages and write eventfds.
fn vcpu(list: &mut Allowlist) {
    list.when_arg_in(libc::SYS_ioctl, 1, &[KVM_RUN, KVM_GET_REGS]);
}

/// What the main thread calls beyond [`common`] and [`device_loop`]: QMP, the drives QMP
/// opens, the vCPU kicks, and the shutdown path.
fn main(list: &mut Allowlist) {
    // QMP: the listening socket accepts; a client's socket is read and written (the standard
    // library's socket calls); `quit`'s reply is flushed with a send timeout.
    list.any(&[libc::SYS_accept4, libc::SYS_recvfrom, libc::SYS_sendto])
        .when(
            libc::SYS_setsockopt,
            &[
                arg(1, libc::SOL_SOCKET as u32),
                arg(2, libc::SO_SNDTIMEO as u32),
            ],
        );
    // blockdev-add and device_add open images: never creating or truncating a file.
    list.when(
        libc::SYS_openat,
        &[clear(2, (libc::O_CREAT | libc::O_TRUNC) as u64)],
    )
    .any(&[libc::SYS_newfstatat, libc::SYS_statx, libc::SYS_lseek]);
    // Their image locks (OFD locks, never waiting).
    list.when_arg_in(
        libc::SYS_fcntl,
        1,
        &[libc::F_OFD_GETLK as u64, libc::F_OFD_SETLK as u64],
    );
    // Their host block size (block devices), the console's terminal, non-blocking sockets.
    list.when_arg_in(
        libc::SYS_ioctl,
        1,
        &[
            libc::BLKSSZGET,
            libc::BLKPBSZGET,
            libc::TCGETS,
            libc::TCSETS,
            libc::FIONBIO,
        ],
    );
    // Their engines: an io_uring ring is set up disabled, probed, given its eventfd and its
    // restrictions here; a native AIO context and the engine's eventfd are created here.
    list.any(&[
        libc::SYS_io_uring_setup,
        libc::SYS_io_setup,
        libc::SYS_eventfd2,
    ])
    .when_arg_in(
        libc::SYS_io_uring_register,
        1,
        &[
            u64::from(IORING_REGISTER_PROBE),
            u64::from(IORING_REGISTER_EVENTFD),
            u64::from(IORING_REGISTER_RESTRICTIONS),
        ],
    );
    // The shutdown path removes the QMP socket file and the pid file.
    list.any(&[libc::SYS_unlink]);
    // The workers of an aio=threads engine for a drive QMP opens: `clone` itself is decided by
    // the thread-start filters. A new thread runs under this filter until it installs its own:
    // glibc registers its restartable sequences and robust futex list, the standard library
    // names the thread and reads its stack's bounds (`pthread_getattr_np`, which asks for the
    // thread's CPU affinity), the allocator makes the thread an arena (once per process it
    // reads how many CPUs are online: `openat`, `read`, `close`, allowed above); then the
    // worker installs its filter.
    list.any(&[libc::SYS_set_robust_list, libc::SYS_sched_getaffinity])
        .when(libc::SYS_rseq, &[arg(2, 0u32)])
        .when_arg_in(
            libc::SYS_prctl,
            0,
            &[libc::PR_SET_NAME as u64, libc::PR_SET_NO_NEW_PRIVS as u64],
        )
        .when(
            libc::SYS_seccomp,
            &[arg(0, libc::SECCOMP_SET_MODE_FILTER), arg(1, 0u32)],
        );
}

/// The calls `role` may make, by name, each with whether its arguments are checked (for the
/// documentation and the tests).
pub fn allowed_syscalls(role: ThreadRole) -> Vec<(&'static str, bool)> {
    allowlist(role)
        .0
        .iter()
        .map(|(&call, rules)| {
            let name = names::name(call as i32).unwrap_or("?");
            (name, rules.is_some())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_ioctl_numbers_are_the_kernel_headers() {
        // <linux/kvm.h> on x86_64.
        assert_eq!(KVM_RUN, 0xae80);
        assert_eq!(KVM_GET_REGS, 0x8090_ae81);
    }

    #[test]
    fn the_thread_clone_flags_are_glibcs() {
        // glibc's pthread_create (sysdeps/unix/sysv/linux/createthread.c), on x86_64.
        assert_eq!(THREAD_CLONE_FLAGS, 0x003d_0f00);
        // Nothing that makes a process: no exit signal, no vfork, no new namespace.
        assert_eq!(THREAD_CLONE_FLAGS & 0xff, 0);
        assert_eq!(THREAD_CLONE_FLAGS & libc::CLONE_VFORK as u64, 0);
        assert_ne!(THREAD_CLONE_FLAGS & libc::CLONE_THREAD as u64, 0);
    }

    #[test]
    fn a_call_allowed_with_any_arguments_stays_so() {
        let mut list = Allowlist::default();
        list.when(libc::SYS_ioctl, &[arg(1, 1u64)]);
        list.any(&[libc::SYS_ioctl]);
        list.when(libc::SYS_ioctl, &[arg(1, 2u64)]);
        assert!(list.0[&libc::SYS_ioctl].is_none());
    }

    #[test]
    fn no_role_may_start_processes_threads_or_network_sockets() {
        for role in ThreadRole::ALL {
            let calls = allowed_syscalls(role);
            for forbidden in [
                "execve",
                "execveat",
                "fork",
                "vfork",
                "clone",
                "clone3",
                "ptrace",
                "socket",
                "connect",
                "bind",
                "listen",
                "mount",
                "setuid",
                "kill",
                "process_vm_writev",
            ] {
                assert!(
                    !calls.iter().any(|(name, _)| *name == forbidden),
                    "{role} allows {forbidden}"
                );
            }
        }
    }
}
