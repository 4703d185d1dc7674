//! The VMM's seccomp sandbox: one filter per thread role, built with `seccompiler`.
//!
//! ```text
//!  Sandbox::new ── compiles ──► main ───────┐
//!                               vcpu        ├─ per role: thread-start filter(s) + allowlist
//!                               iothread    │
//!                               aio-worker ─┘
//!  each thread, as it starts:  Sandbox::install(role)
//!      ├─ SIGSYS handler (once per process)
//!      ├─ the thread's name for the SIGSYS line (thread-local, preformatted)
//!      ├─ PR_SET_NO_NEW_PRIVS + seccomp(SECCOMP_SET_MODE_FILTER) on the calling thread:
//!      │    the thread-start filter(s): clone/clone3 fail with EPERM (main: clone3 ENOSYS,
//!      │    clone EPERM unless it starts a thread), then the role's allowlist
//!  a forbidden call ─► SECCOMP_RET_TRAP ─► SIGSYS ─► one log line naming the call and the
//!                                                    thread, then _exit(159)
//! ```
//!
//! Invariants:
//! - Filters are per thread: each thread installs its own role's filters before it runs
//!   anything a guest or a client controls (a vCPU before its first `KVM_RUN`, an iothread
//!   before its loop, an `aio=threads` worker before its first request, the main thread
//!   after it started the vCPUs and iothreads and before the vCPUs run).
//! - A filter allows what its role's code calls and nothing else; everything else traps.
//!   The lists are in `rules.rs`, by role and by purpose, with argument checks where an
//!   argument decides what the call can do (`ioctl` requests, `mmap`/`mprotect` without
//!   `PROT_EXEC`, `fcntl` commands, `io_uring_register` opcodes, `openat` without `O_CREAT`,
//!   `tgkill` to this process only, `timerfd_create` flags, `prctl` options).
//! - Only the main thread starts threads once filtered, and only threads: the workers of the
//!   `aio=threads` engines of drives QMP opens. `clone3` fails with `ENOSYS` there (glibc then
//!   uses `clone`), and `clone` with `EPERM` unless its flags are exactly glibc's
//!   `pthread_create` flags ([`THREAD_CLONE_FLAGS`]); every other role's `clone` and `clone3`
//!   fail with `EPERM`. These answers come from thread-start filters installed before each
//!   allowlist: the calls cannot trap like the rest, because glibc blocks every signal around
//!   them (`pthread_create`, `posix_spawn`), and a SIGSYS that arrives blocked kills the
//!   process without its handler: no log line, and a core dump. A refused call is its
//!   caller's error instead.
//! - A thread inherits its creator's filters: a worker the filtered main thread starts runs
//!   the thread start of glibc and the standard library under the main thread's filters (they
//!   allow exactly that), then installs its own; the kernel applies all of them.
//! - The SIGSYS handler is async-signal-safe: it formats into a stack buffer, `write(2)`s the
//!   line to the log's descriptor (and stderr, when the log is a file) and calls `_exit`;
//!   both calls are allowed in every filter.
//! - `-disable-seccomp` builds no [`Sandbox`]: no thread installs anything.

mod names;
mod rules;
mod trap;

use std::fmt;
use std::sync::Arc;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};
use util::aio::WorkerSetup;

pub use rules::{allowed_syscalls, refused_syscalls, THREAD_CLONE_FLAGS};
pub use trap::EXIT_STATUS;

/// The kind of thread a filter is made for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ThreadRole {
    /// The main thread: the main loop (QMP, signals, console, devices without `iothread=`)
    /// and the shutdown path.
    Main,
    /// A vCPU thread: `KVM_RUN` and the exits it dispatches to the buses.
    Vcpu,
    /// An iothread (`-object iothread`): the event loop of the devices placed on it.
    Iothread,
    /// A worker of an `aio=threads` engine (`aio-worker-N`): runs requests' system calls.
    AioWorker,
}

impl ThreadRole {
    /// Every role, in the order of [`Sandbox`]'s programs.
    pub const ALL: [ThreadRole; 4] = [
        ThreadRole::Main,
        ThreadRole::Vcpu,
        ThreadRole::Iothread,
        ThreadRole::AioWorker,
    ];

    /// The role's name in logs and documentation.
    pub fn as_str(self) -> &'static str {
        match self {
            ThreadRole::Main => "main",
            ThreadRole::Vcpu => "vcpu",
            ThreadRole::Iothread => "iothread",
            ThreadRole::AioWorker => "aio-worker",
        }
    }

    fn index(self) -> usize {
        match self {
            ThreadRole::Main => 0,
            ThreadRole::Vcpu => 1,
            ThreadRole::Iothread => 2,
            ThreadRole::AioWorker => 3,
        }
    }
}

impl fmt::Display for ThreadRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Errors of building and installing the filters.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// `seccompiler` refused a rule list (a bug in `rules.rs`).
    #[error("cannot build the seccomp filter of the {role} threads")]
    Build {
        /// The role.
        role: ThreadRole,
        /// The cause.
        #[source]
        source: seccompiler::BackendError,
    },
    /// The kernel refused the filter (no seccomp, or no `PR_SET_NO_NEW_PRIVS`).
    #[error("cannot install the seccomp filter of the {role} threads")]
    Install {
        /// The role.
        role: ThreadRole,
        /// The cause.
        #[source]
        source: seccompiler::Error,
    },
    /// The SIGSYS handler could not be installed.
    #[error("cannot install the SIGSYS handler")]
    SignalHandler(#[source] std::io::Error),
}

/// Result of this module.
pub type Result<T> = std::result::Result<T, SeccompError>;

/// The compiled filters of one role: its thread-start filters, then its allowlist.
struct RoleFilters {
    thread_start: Vec<BpfProgram>,
    allowlist: BpfProgram,
}

/// The compiled filters of every role, shared by the threads that install them.
#[derive(Clone)]
pub struct Sandbox {
    roles: Arc<[RoleFilters; 4]>,
}

impl fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sandbox")
            .field(
                "instructions",
                &self.roles.each_ref().map(|r| r.allowlist.len()),
            )
            .field(
                "thread_start",
                &self
                    .roles
                    .each_ref()
                    .map(|r| r.thread_start.iter().map(Vec::len).sum::<usize>()),
            )
            .finish()
    }
}

impl Sandbox {
    /// Compiles the filter of every role (this process's id goes into the `tgkill` rule, so
    /// build the sandbox after `-daemonize` forked).
    pub fn new() -> Result<Sandbox> {
        let build = |role: ThreadRole| -> Result<RoleFilters> {
            let failed = |source| SeccompError::Build { role, source };
            let allowlist = SeccompFilter::new(
                rules::rules(role).map_err(failed)?,
                SeccompAction::Trap,
                SeccompAction::Allow,
                TargetArch::x86_64,
            )
            .map_err(failed)?
            .try_into()
            .map_err(failed)?;
            let thread_start = rules::thread_start_filters(role)
                .map_err(failed)?
                .into_iter()
                .map(|filter| {
                    SeccompFilter::new(
                        filter.rules,
                        SeccompAction::Allow,
                        SeccompAction::Errno(filter.errno as u32),
                        TargetArch::x86_64,
                    )
                    .and_then(BpfProgram::try_from)
                    .map_err(failed)
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(RoleFilters {
                thread_start,
                allowlist,
            })
        };
        Ok(Sandbox {
            roles: Arc::new([
                build(ThreadRole::Main)?,
                build(ThreadRole::Vcpu)?,
                build(ThreadRole::Iothread)?,
                build(ThreadRole::AioWorker)?,
            ]),
        })
    }

    /// Confines the calling thread to `role`'s filters, for the rest of its life (and that of
    /// any thread it starts later). The VMM calls this first thing on each of its threads.
    pub fn install(&self, role: ThreadRole) -> Result<()> {
        trap::install_handler().map_err(SeccompError::SignalHandler)?;
        trap::record_utc_offset();
        let name = std::thread::current();
        trap::name_this_thread(name.name().unwrap_or("unnamed"), role);
        let failed = |source| SeccompError::Install { role, source };
        let filters = &self.roles[role.index()];
        // The allowlist last: only the main thread's lets a thread install filters (those of
        // a worker it starts).
        for program in &filters.thread_start {
            seccompiler::apply_filter(program).map_err(failed)?;
        }
        seccompiler::apply_filter(&filters.allowlist).map_err(failed)?;
        log::debug!(
            "seccomp: thread {} runs under the {role} filter",
            name.name().unwrap_or("unnamed")
        );
        Ok(())
    }

    /// The set-up step of an `aio=threads` engine's workers: each installs the
    /// [`ThreadRole::AioWorker`] filters before it takes a request.
    pub fn worker_setup(&self) -> WorkerSetup {
        let sandbox = self.clone();
        WorkerSetup::new(move || Ok(sandbox.install(ThreadRole::AioWorker)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_role_compiles() {
        let sandbox = Sandbox::new().unwrap();
        for role in ThreadRole::ALL {
            let filters = &sandbox.roles[role.index()];
            assert!(!filters.allowlist.is_empty(), "{role}");
            let expected = if role == ThreadRole::Main { 2 } else { 1 };
            assert_eq!(filters.thread_start.len(), expected, "{role}");
        }
    }

    #[test]
    fn syscall_names_match_their_numbers() {
        for (nr, name) in [
            (libc::SYS_read, "read"),
            (libc::SYS_ioctl, "ioctl"),
            (libc::SYS_socket, "socket"),
            (libc::SYS_execve, "execve"),
            (libc::SYS_openat, "openat"),
            (libc::SYS_io_uring_setup, "io_uring_setup"),
            (libc::SYS_io_uring_register, "io_uring_register"),
            (libc::SYS_clone3, "clone3"),
            (libc::SYS_mseal, "mseal"),
        ] {
            assert_eq!(names::name(nr as i32), Some(name), "{nr}");
        }
        assert_eq!(names::name(400), None);
        assert_eq!(names::name(-1), None);
        assert_eq!(names::name(100_000), None);
    }
}
