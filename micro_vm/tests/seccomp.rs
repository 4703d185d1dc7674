//! The seccomp filters at work: in a child process (this test binary run again), a thread
//! installs the VMM's real filter of one role through [`Sandbox::install`], the function the
//! VMM uses, makes allowed calls, then a forbidden one; the process must end with status 159
//! and one log line, in the logger's format, naming the call and the thread. Also: the main
//! thread starts an `aio=threads` engine's workers, which run its requests under their own
//! filter, and still cannot start a process.

use std::io::Write;
use std::os::unix::io::AsRawFd;
use std::process::Command;
use std::sync::{Arc, Mutex};

use micro_vm::seccomp::{allowed_syscalls, refused_syscalls, Sandbox, ThreadRole, EXIT_STATUS};
use util::aio::{open_engine_with, AioContext, AioEngine, AioOpcode, AioRequest, Iovec};
use util::aio::{AioCompletion, WorkerSetup};
use util::event_loop::EventLoopThread;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Set in the child: which case of [`CASES`] to run.
const CHILD_CASE: &str = "MICRO_VM_SECCOMP_CASE";
/// Set in the child: a scratch directory for its files.
const CHILD_DIR: &str = "MICRO_VM_SECCOMP_DIR";
/// What the child writes before its forbidden call (through allowed calls only).
const ALIVE: &str = "child: allowed calls done";
/// What the child writes when starting a thread was refused.
const CLONE_REFUSED: &str = "child: clone refused with EPERM";
/// What the child writes when the main thread started workers and could not start processes.
const FORK_REFUSED: &str = "child: workers ran, fork and spawn refused with EPERM";
/// What the child writes when the workers' requests completed under their filter.
const WORKERS_RAN: &str = "child: requests ran on filtered workers";

/// One forbidden call: the role whose filter is installed, the thread that installs it (named
/// as the VMM names it), and the call the log line must name.
struct Case {
    name: &'static str,
    role: ThreadRole,
    thread: &'static str,
    call: &'static str,
    make_call: fn(&Sandbox),
    /// Lines the child must have written before its forbidden call.
    markers: &'static [&'static str],
}

const CASES: &[Case] = &[
    Case {
        name: "main-socket",
        role: ThreadRole::Main,
        thread: "main",
        call: "socket",
        markers: &[],
        make_call: |_| {
            // SAFETY: plain system call; the filter traps it before it runs.
            unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        },
    },
    Case {
        name: "main-openat-create",
        role: ThreadRole::Main,
        thread: "main",
        call: "openat",
        markers: &[],
        make_call: |_| {
            // Opening is allowed on the main thread, creating a file is not.
            let _ = std::fs::File::create("/tmp/micro-vm-seccomp-must-not-exist");
        },
    },
    Case {
        name: "vcpu-openat",
        role: ThreadRole::Vcpu,
        thread: "vcpu0",
        call: "openat",
        markers: &[],
        make_call: |_| {
            let _ = std::fs::File::open("/proc/self/status");
        },
    },
    Case {
        name: "vcpu-ioctl",
        role: ThreadRole::Vcpu,
        thread: "vcpu1",
        call: "ioctl",
        markers: &[],
        make_call: |_| {
            // KVM_RUN is allowed to a vCPU; asking a terminal for its settings is not.
            // SAFETY: termios is plain data, valid when zeroed.
            let mut t: libc::termios = unsafe { std::mem::zeroed() };
            // SAFETY: TCGETS writes one termios, which `t` is.
            unsafe { libc::ioctl(0, libc::TCGETS, &mut t) };
        },
    },
    Case {
        name: "vcpu-mmap-exec",
        role: ThreadRole::Vcpu,
        thread: "vcpu0",
        call: "mmap",
        markers: &[],
        make_call: |_| {
            // Anonymous memory is allowed to every thread; executable memory to none.
            // SAFETY: a fresh anonymous mapping overlaps nothing.
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
        },
    },
    Case {
        name: "iothread-socket",
        role: ThreadRole::Iothread,
        thread: "iothread-io0",
        call: "socket",
        markers: &[],
        make_call: |_| {
            // SAFETY: plain system call; the filter traps it before it runs.
            unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) };
        },
    },
    Case {
        name: "iothread-clone",
        role: ThreadRole::Iothread,
        thread: "iothread-io1",
        call: "socket",
        markers: &[CLONE_REFUSED],
        make_call: |_| {
            // No thread starts under a filter: clone3 (and clone) fail with EPERM.
            let err = std::thread::Builder::new()
                .spawn(|| {})
                .expect_err("a thread started under the filter");
            assert_eq!(err.raw_os_error(), Some(libc::EPERM), "{err}");
            let _ = writeln!(std::io::stderr(), "{CLONE_REFUSED}");
            // SAFETY: plain system call; the filter traps it before it runs.
            unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) };
        },
    },
    Case {
        name: "main-starts-workers-not-processes",
        role: ThreadRole::Main,
        thread: "main",
        call: "socket",
        markers: &[WORKERS_RAN, FORK_REFUSED],
        make_call: |sandbox| {
            // As QMP blockdev-add opens an aio=threads drive: the workers start under this
            // thread's filter, install their own, and run requests.
            let tids: Arc<Mutex<Vec<i32>>> = Arc::default();
            let recorded = tids.clone();
            let install = sandbox.worker_setup();
            let setup = WorkerSetup::new(move || {
                install.run()?;
                // SAFETY: gettid has no arguments and cannot fail.
                recorded.lock().unwrap().push(unsafe { libc::gettid() });
                Ok(())
            });
            run_worker_requests(&setup, || {
                // Each worker runs under the main thread's filters and its own: 3 + 2.
                for tid in tids.lock().unwrap().iter() {
                    let status =
                        std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).unwrap();
                    let filters = status
                        .lines()
                        .find_map(|l| l.strip_prefix("Seccomp_filters:"))
                        .map(str::trim);
                    assert_eq!(filters, Some("5"), "worker {tid}");
                }
            });
            assert_eq!(tids.lock().unwrap().len(), 2, "two workers were started");
            // No process: fork and posix_spawn fail, the thread goes on.
            // SAFETY: fork is refused before it runs; if it ran, the child would _exit at once.
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                // SAFETY: the forked child ends without running anything else.
                unsafe { libc::_exit(0) };
            }
            let errno = std::io::Error::last_os_error().raw_os_error();
            assert_eq!((pid, errno), (-1, Some(libc::EPERM)), "fork");
            let spawned = Command::new("/bin/true").spawn();
            let err = spawned.expect_err("a process started under the main filter");
            assert_eq!(err.raw_os_error(), Some(libc::EPERM), "{err}");
            let _ = writeln!(std::io::stderr(), "{FORK_REFUSED}");
            // SAFETY: plain system call; the filter traps it before it runs.
            unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) };
        },
    },
    Case {
        name: "aio-worker-socket",
        role: ThreadRole::AioWorker,
        thread: "aio-worker-0",
        call: "socket",
        markers: &[WORKERS_RAN],
        make_call: |_| {
            // SAFETY: plain system call; the filter traps it before it runs.
            unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
        },
    },
    Case {
        name: "aio-worker-clone",
        role: ThreadRole::AioWorker,
        thread: "aio-worker-0",
        call: "openat",
        markers: &[WORKERS_RAN, CLONE_REFUSED],
        make_call: |_| {
            let err = std::thread::Builder::new()
                .spawn(|| {})
                .expect_err("a thread started under the filter");
            assert_eq!(err.raw_os_error(), Some(libc::EPERM), "{err}");
            let _ = writeln!(std::io::stderr(), "{CLONE_REFUSED}");
            // A worker opens nothing.
            let _ = std::fs::File::open("/proc/self/status");
        },
    },
];

/// Allowed everywhere: an eventfd's write and read, time, a lock, a large allocation (a
/// mapping of its own), a line on stderr.
fn allowed_calls(event: &EventFd) {
    event.write(1).expect("write the eventfd");
    assert_eq!(event.read().expect("read the eventfd"), 1);
    let started = std::time::Instant::now();
    let lock = std::sync::Mutex::new(vec![0u8; 4 << 20]);
    lock.lock().unwrap()[0] = 1;
    assert!(started.elapsed().as_secs() < 60);
    let _ = writeln!(std::io::stderr(), "{ALIVE}");
}

/// The file the workers' requests go to: 4096 + 100 bytes of 0x5a, made before any filter.
fn worker_image() -> std::path::PathBuf {
    std::path::PathBuf::from(std::env::var(CHILD_DIR).expect("the child's directory"))
        .join("worker.img")
}

/// Opens an `aio=threads` engine on [`worker_image`] whose two workers run `setup` first, and
/// runs through them a write, a read across the end of the file (a short read: the worker
/// asks where the file ends and zero-fills the rest), a flush and a discard; `during` runs
/// while the workers exist. Waits with `drain` (a condition variable), as a device's thread
/// does when it shuts a queue down.
fn run_worker_requests(setup: &WorkerSetup, during: impl FnOnce()) {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(worker_image())
        .expect("open the image (no O_CREAT)");
    let mut ctx = open_engine_with(AioEngine::Threads, file.as_raw_fd(), 2, setup)
        .expect("an engine whose workers install their filter");
    let data = vec![0x11u8; 4096];
    let mut read = vec![0xffu8; 8192];
    let request = |opcode, offset, iovecs: Vec<Iovec>, len, tag| AioRequest {
        opcode,
        offset,
        iovecs,
        len,
        tag,
        keep_alive: None,
    };
    let run = |ctx: &mut dyn AioContext, batch: Vec<AioRequest>| -> Vec<AioCompletion> {
        let mut batch = batch;
        let count = batch.len();
        // SAFETY: `data` and `read` outlive the drain below, which completes every request.
        unsafe { ctx.submit(&mut batch) }.expect("submit");
        let mut done = Vec::new();
        ctx.drain(&mut done).expect("drain");
        assert_eq!(done.len(), count);
        done
    };
    let iovec = |buf: &[u8]| Iovec {
        base: buf.as_ptr() as u64,
        len: buf.len() as u64,
    };
    let done = run(
        ctx.as_mut(),
        vec![request(AioOpcode::Write, 0, vec![iovec(&data)], 0, 1)],
    );
    assert_eq!(done[0].result, 4096, "write");
    let done = run(
        ctx.as_mut(),
        vec![request(AioOpcode::Read, 4096, vec![iovec(&read)], 0, 2)],
    );
    assert_eq!(done[0].result, 8192, "read across the end");
    assert!(read[..100].iter().all(|&b| b == 0x5a), "the file's tail");
    assert!(
        read[100..].iter().all(|&b| b == 0),
        "zero-filled past the end"
    );
    read.clear();
    let mut done = run(
        ctx.as_mut(),
        vec![
            request(AioOpcode::Flush, 0, Vec::new(), 0, 3),
            request(AioOpcode::Discard, 0, Vec::new(), 4096, 4),
        ],
    );
    done.sort_by_key(|c| c.tag);
    assert_eq!(
        (done[0].result, done[1].result),
        (0, 4096),
        "flush, discard"
    );
    during();
    drop(ctx);
    let _ = writeln!(std::io::stderr(), "{WORKERS_RAN}");
}

/// The child's side: install the case's filter on a thread named as the VMM names it, then
/// make allowed calls and the forbidden one. Never returns if the filter works.
fn run_child(case: &Case) {
    let sandbox = Sandbox::new().expect("build the filters");
    let event = EventFd::new(EFD_NONBLOCK).unwrap();
    let make_call = case.make_call;
    let mut image = vec![0x5au8; 4096 + 100];
    image[..4096].fill(0);
    std::fs::write(worker_image(), &image).expect("the workers' image");
    match case.role {
        ThreadRole::Iothread => {
            // The real iothread: the filter is installed as the VMM installs it.
            let installer = sandbox.clone();
            let thread = EventLoopThread::spawn_with(case.thread, move || {
                Ok(installer.install(ThreadRole::Iothread)?)
            })
            .expect("start the iothread");
            // Posted, so it runs on the iothread (a `call` may run on its caller).
            let (done, returned) = std::sync::mpsc::channel();
            thread.event_loop().post(move || {
                allowed_calls(&event);
                make_call(&sandbox);
                let _ = done.send(());
            });
            let _ = returned.recv_timeout(std::time::Duration::from_secs(60));
        }
        ThreadRole::AioWorker => {
            // Real workers: an engine whose workers install their filter as the VMM's do.
            run_worker_requests(&sandbox.worker_setup(), || {});
            // Another engine whose one worker, once under its filter, makes allowed calls,
            // then the forbidden one.
            let install = sandbox.worker_setup();
            let setup = WorkerSetup::new(move || {
                install.run()?;
                allowed_calls(&event);
                make_call(&sandbox);
                Ok(())
            });
            let file = std::fs::File::open(worker_image()).unwrap();
            let _ = open_engine_with(AioEngine::Threads, file.as_raw_fd(), 1, &setup);
        }
        role => {
            std::thread::Builder::new()
                .name(case.thread.to_string())
                .spawn(move || {
                    sandbox.install(role).expect("install the filter");
                    allowed_calls(&event);
                    make_call(&sandbox);
                })
                .expect("start the thread")
                .join()
                .expect("the thread");
        }
    }
    panic!("the forbidden call of {} returned", case.name);
}

/// The child's time zone (POSIX form: no zone file needed), and its offset from UTC.
const CHILD_TZ: &str = "XST-5:30";
const CHILD_UTC_OFFSET: i64 = 5 * 3600 + 30 * 60;

/// Checks that `time` (`2026-11-30T12:00:00.123456789`) is the local time of a zone
/// `offset` seconds east of UTC, within two minutes of now.
fn check_local_time(time: &str, offset: i64, report: &str) {
    assert_eq!(time.len(), 29, "{report}");
    assert_eq!(
        (&time[4..5], &time[7..8], &time[10..11], &time[19..20]),
        ("-", "-", "T", "."),
        "{report}"
    );
    let number = |range: std::ops::Range<usize>| -> i64 {
        time[range]
            .parse()
            .unwrap_or_else(|_| panic!("time {time}: {report}"))
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        + offset;
    // SAFETY: `tm` is plain old data, valid when zeroed.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid; gmtime_r writes only into `tm`.
    assert!(!unsafe { libc::gmtime_r(&now, &mut tm) }.is_null());
    let day = (
        i64::from(tm.tm_year + 1900),
        i64::from(tm.tm_mon + 1),
        i64::from(tm.tm_mday),
    );
    let seconds = number(11..13) * 3600 + number(14..16) * 60 + number(17..19);
    let expected = now.rem_euclid(86_400);
    let apart = (seconds - expected).rem_euclid(86_400);
    assert!(
        apart.min(86_400 - apart) <= 120,
        "{time} is not the local time (UTC{offset:+} s): {report}"
    );
    if apart <= 120 && expected >= 120 {
        assert_eq!((number(0..4), number(5..7), number(8..10)), day, "{report}");
    }
    assert!(number(20..29) < 1_000_000_000, "{report}");
}

#[test]
fn a_forbidden_call_ends_the_process_with_one_line_naming_the_call_and_the_thread() {
    if let Ok(name) = std::env::var(CHILD_CASE) {
        let case = CASES.iter().find(|c| c.name == name).expect("known case");
        run_child(case);
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let dir = std::env::temp_dir().join(format!("micro-vm-seccomp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for case in CASES {
        let child = Command::new(&exe)
            .args([
                "a_forbidden_call_ends_the_process_with_one_line_naming_the_call_and_the_thread",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_CASE, case.name)
            .env(CHILD_DIR, &dir)
            // Local time is UTC + 5:30 in the child: its line must show it.
            .env("TZ", CHILD_TZ)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let report = format!("case {}: {:?}\n{stderr}", case.name, out.status);
        assert_eq!(out.status.code(), Some(EXIT_STATUS), "{report}");
        assert!(stderr.contains(ALIVE), "allowed calls ran first: {report}");
        for marker in case.markers {
            assert!(stderr.contains(marker), "{marker:?}: {report}");
        }
        let lines: Vec<&str> = stderr.lines().filter(|l| l.contains(":ERROR: ")).collect();
        assert_eq!(lines.len(), 1, "one line: {report}");
        let line = lines[0];
        // TIME: [pid][tid][micro_vm/src/seccomp/trap.rs:N]:ERROR: message, as the logger.
        let (time, rest) = line.split_once(": [").unwrap_or_else(|| panic!("{report}"));
        check_local_time(time, CHILD_UTC_OFFSET, &report);
        let fields: Vec<&str> = rest.splitn(3, "][").collect();
        assert_eq!(fields.len(), 3, "{report}");
        assert_eq!(fields[0], pid.to_string(), "{report}");
        let tid: u32 = fields[1]
            .parse()
            .unwrap_or_else(|_| panic!("tid: {report}"));
        assert_ne!(
            tid, pid,
            "the trapping thread is not the process's first: {report}"
        );
        let (location, message) = fields[2].split_once("]:ERROR: ").unwrap();
        let (file, number) = location.rsplit_once(':').unwrap();
        assert_eq!(file, "micro_vm/src/seccomp/trap.rs", "{report}");
        assert!(number.parse::<u32>().is_ok(), "{report}");
        let expected = format!(
            "thread '{}' ({} filter) made the forbidden system call {} (",
            case.thread, case.role, case.call
        );
        assert!(
            message.starts_with(&expected),
            "expected {expected:?}: {report}"
        );
        assert!(message.ends_with("); the VMM ends"), "{report}");
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!std::path::Path::new("/tmp/micro-vm-seccomp-must-not-exist").exists());
}

#[test]
fn the_roles_allow_what_their_threads_do_and_no_more() {
    let names = |role| -> Vec<&str> {
        allowed_syscalls(role)
            .into_iter()
            .map(|(name, _)| name)
            .collect()
    };
    let (main, vcpu, iothread, worker) = (
        names(ThreadRole::Main),
        names(ThreadRole::Vcpu),
        names(ThreadRole::Iothread),
        names(ThreadRole::AioWorker),
    );
    // A vCPU runs guest code and posts messages; it neither opens nor serves I/O.
    assert!(vcpu.contains(&"ioctl"));
    for call in [
        "openat",
        "io_uring_enter",
        "io_submit",
        "epoll_wait",
        "accept4",
    ] {
        assert!(!vcpu.contains(&call), "vcpu allows {call}");
    }
    // An iothread serves I/O; it opens nothing and accepts no client.
    assert!(iothread.contains(&"io_uring_enter") && iothread.contains(&"io_submit"));
    for call in ["openat", "accept4", "io_uring_setup", "ioctl", "unlink"] {
        assert!(!iothread.contains(&call), "iothread allows {call}");
    }
    // An aio=threads worker runs requests' system calls: a part of what an iothread does
    // (aio=off), no loop, no engine set-up, no timer.
    assert!(worker.iter().all(|call| iothread.contains(call)));
    for call in ["preadv", "pwritev", "fdatasync", "fallocate", "lseek"] {
        assert!(worker.contains(&call), "aio-worker lacks {call}");
    }
    for call in [
        "openat",
        "ioctl",
        "epoll_wait",
        "io_uring_enter",
        "io_submit",
        "timerfd_create",
        "prctl",
        "seccomp",
    ] {
        assert!(!worker.contains(&call), "aio-worker allows {call}");
    }
    // The main thread does what an iothread does, and opens drives for QMP; it alone may
    // install a filter (the workers it starts do, under its own).
    assert!(iothread.iter().all(|call| main.contains(call)));
    assert!(main.contains(&"openat") && main.contains(&"accept4"));
    for role in [
        ThreadRole::Vcpu,
        ThreadRole::Iothread,
        ThreadRole::AioWorker,
    ] {
        for call in ["seccomp", "prctl", "rseq", "set_robust_list"] {
            assert!(!names(role).contains(&call), "{role} allows {call}");
        }
    }
    // The argument-checked calls.
    let checked = |role, call| {
        allowed_syscalls(role)
            .into_iter()
            .any(|(name, checked)| name == call && checked)
    };
    for call in ["ioctl", "mmap", "mprotect", "tgkill"] {
        assert!(checked(ThreadRole::Vcpu, call), "vcpu {call} is checked");
    }
    for call in ["ioctl", "fcntl", "openat", "io_uring_register", "mmap"] {
        assert!(checked(ThreadRole::Main, call), "main {call} is checked");
    }
    for call in ["prctl", "seccomp", "rseq", "timerfd_create"] {
        assert!(checked(ThreadRole::Main, call), "main {call} is checked");
    }
    for call in [
        "io_uring_register",
        "timerfd_create",
        "timerfd_settime",
        "lseek",
    ] {
        assert!(
            checked(ThreadRole::Iothread, call),
            "iothread {call} is checked"
        );
    }
    assert!(checked(ThreadRole::AioWorker, "lseek"));
}

#[test]
fn the_allowlists_are_documented() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/sandbox.md"))
        .expect("docs/sandbox.md");
    let mut missing = Vec::new();
    for role in ThreadRole::ALL {
        for (name, _) in allowed_syscalls(role) {
            if !doc.contains(&format!("`{name}`")) {
                missing.push(format!("{role}: {name}"));
            }
        }
    }
    for name in refused_syscalls() {
        if !doc.contains(&format!("`{name}`")) {
            missing.push(format!("refused: {name}"));
        }
    }
    assert!(
        missing.is_empty(),
        "not named in docs/sandbox.md: {missing:?}"
    );
}
