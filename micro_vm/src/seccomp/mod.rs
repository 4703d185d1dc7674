//! The VMM's seccomp sandbox: one filter per thread role, built with `seccompiler`.
//!
//! ```text
//!  Sandbox::new ── compiles ──► main ─┐
//!                               vcpu ─┼─ BPF programs, one per ThreadRole
//!                           iothread ─┘
//!  each thread, as it starts:  Sandbox::install(role)
//!      ├─ SIGSYS handler (once per process)
//!      ├─ the thread's name for the SIGSYS line (thread-local, preformatted)
//!      ├─ PR_SET_NO_NEW_PRIVS + seccomp(SECCOMP_SET_MODE_FILTER) on the calling thread
//!      └─ the "no new threads" filter: clone/clone3 fail with EPERM
//!  a forbidden call ─► SECCOMP_RET_TRAP ─► SIGSYS ─► one log line naming the call and the
//!                                                    thread, then _exit(159)
//! ```
//!
//! Invariants:
//! - Filters are per thread: each thread installs its own role's filter before it runs
//!   anything a guest or a client controls (a vCPU before its first `KVM_RUN`, an iothread
//!   before its loop, the main thread after it started the vCPUs and before they run), and
//!   no thread is started after the main thread installed its filter (a child would inherit
//!   it, and `clone` is not allowed anyway).
//! - A filter allows what its role's code calls and nothing else; everything else traps.
//!   The lists are in `rules.rs`, by role and by purpose, with argument checks where an
//!   argument decides what the call can do (`ioctl` requests, `mmap`/`mprotect` without
//!   `PROT_EXEC`, `fcntl` commands, `io_uring_register` opcodes, `openat` without `O_CREAT`,
//!   `tgkill` to this process only).
//! - No thread is started under a filter: `clone` and `clone3` fail with `EPERM` (a second,
//!   small filter installed with each role's). They cannot trap like the rest, because glibc
//!   blocks every signal around them (`pthread_create`), and a SIGSYS that arrives blocked
//!   kills the process without its handler: no log line, and a core dump. A refused thread is
//!   its caller's error instead.
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

pub use rules::{allowed_syscalls, refused_syscalls};
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
}

impl ThreadRole {
    /// Every role, in the order of [`Sandbox`]'s programs.
    pub const ALL: [ThreadRole; 3] = [ThreadRole::Main, ThreadRole::Vcpu, ThreadRole::Iothread];

    /// The role's name in logs and documentation.
    pub fn as_str(self) -> &'static str {
        match self {
            ThreadRole::Main => "main",
            ThreadRole::Vcpu => "vcpu",
            ThreadRole::Iothread => "iothread",
        }
    }

    fn index(self) -> usize {
        match self {
            ThreadRole::Main => 0,
            ThreadRole::Vcpu => 1,
            ThreadRole::Iothread => 2,
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

/// The compiled filters of every role, shared by the threads that install them.
#[derive(Clone)]
pub struct Sandbox {
    programs: Arc<[BpfProgram; 3]>,
    /// `clone` and `clone3` fail with `EPERM`; installed with every role's filter.
    no_new_threads: Arc<BpfProgram>,
}

impl fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sandbox")
            .field("instructions", &self.programs.each_ref().map(Vec::len))
            .field("no_new_threads", &self.no_new_threads.len())
            .finish()
    }
}

impl Sandbox {
    /// Compiles the filter of every role (this process's id goes into the `tgkill` rule, so
    /// build the sandbox after `-daemonize` forked).
    pub fn new() -> Result<Sandbox> {
        let build = |role: ThreadRole| -> Result<BpfProgram> {
            let failed = |source| SeccompError::Build { role, source };
            let filter = SeccompFilter::new(
                rules::rules(role).map_err(failed)?,
                SeccompAction::Trap,
                SeccompAction::Allow,
                TargetArch::x86_64,
            )
            .map_err(failed)?;
            filter.try_into().map_err(failed)
        };
        let failed = |source| SeccompError::Build {
            role: ThreadRole::Main,
            source,
        };
        let no_new_threads = SeccompFilter::new(
            rules::REFUSED
                .iter()
                .map(|&call| (call, Vec::new()))
                .collect(),
            SeccompAction::Allow,
            SeccompAction::Errno(libc::EPERM as u32),
            TargetArch::x86_64,
        )
        .map_err(failed)?
        .try_into()
        .map_err(failed)?;
        Ok(Sandbox {
            programs: Arc::new([
                build(ThreadRole::Main)?,
                build(ThreadRole::Vcpu)?,
                build(ThreadRole::Iothread)?,
            ]),
            no_new_threads: Arc::new(no_new_threads),
        })
    }

    /// Confines the calling thread to `role`'s filter, for the rest of its life (and that of
    /// any thread it starts later). The VMM calls this first thing on each of its threads.
    pub fn install(&self, role: ThreadRole) -> Result<()> {
        trap::install_handler().map_err(SeccompError::SignalHandler)?;
        trap::record_utc_offset();
        let name = std::thread::current();
        trap::name_this_thread(name.name().unwrap_or("unnamed"), role);
        let failed = |source| SeccompError::Install { role, source };
        // The role's filter last: it does not allow installing filters.
        seccompiler::apply_filter(&self.no_new_threads).map_err(failed)?;
        seccompiler::apply_filter(&self.programs[role.index()]).map_err(failed)?;
        log::debug!(
            "seccomp: thread {} runs under the {role} filter",
            name.name().unwrap_or("unnamed")
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_role_compiles() {
        let sandbox = Sandbox::new().unwrap();
        for role in ThreadRole::ALL {
            assert!(!sandbox.programs[role.index()].is_empty(), "{role}");
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
