//! The `stratovirt` process as StratoVirt's users drive it, on real KVM with a tiny kernel:
//! the log's line format and `STRATOVIRT_LOG_LEVEL`, the QMP socket file gone after `quit`,
//! SIGTERM and a failed start, QMP without negotiation, and `-daemonize` keeping the working
//! directory, reporting its start-up errors and refusing a console on stdio.

mod common;

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use common::{run, scratch_dir, stratovirt, write_tiny_elf, PlainQmp as Plain};

const QUICK: Duration = Duration::from_secs(60);

/// Waits until `path` no longer exists.
fn wait_gone(path: &Path, what: &str) {
    let deadline = Instant::now() + QUICK;
    while path.exists() {
        assert!(
            Instant::now() < deadline,
            "{what} {} left behind",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn spin_kernel(dir: &Path) -> std::path::PathBuf {
    let kernel = dir.join("spin.elf");
    write_tiny_elf(&kernel, 0x20_0000, &[0xeb, 0xfe]); // jmp $
    kernel
}

fn spawn(cmd: &mut std::process::Command) -> Child {
    cmd.spawn().expect("spawn stratovirt")
}

#[test]
fn log_lines_have_stratovirts_format_and_level_variable() {
    let dir = scratch_dir("log-format");
    let kernel = spin_kernel(dir.path());
    let socket = dir.join("qmp.sock");
    let child = spawn(
        stratovirt()
            .env("STRATOVIRT_LOG_LEVEL", "info")
            .args(["-kernel", kernel.to_str().unwrap(), "-m", "128"])
            .arg("-qmp")
            .arg(format!("unix:{},server,nowait", socket.display())),
    );
    let mut qmp = Plain::connect(&socket);
    assert!(qmp.execute("quit").get("return").is_some());
    let output = child.wait_with_output_ok();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    let info: Vec<&str> = stderr.lines().filter(|l| l.contains(":INFO: ")).collect();
    assert!(
        info.len() >= 3,
        "INFO lines on stderr without -D:\n{stderr}"
    );
    for line in &info {
        // 2024-05-10T12:00:00.123456789: [pid][tid][file:line]:INFO: message
        let (time, rest) = line.split_once(": [").unwrap_or_else(|| panic!("{line}"));
        assert_eq!(time.len(), 29, "{line}");
        assert_eq!(
            (&time[4..5], &time[10..11], &time[19..20]),
            ("-", "T", "."),
            "{line}"
        );
        assert!(time[20..].bytes().all(|b| b.is_ascii_digit()), "{line}");
        let pid = rest.split(']').next().unwrap();
        assert_eq!(pid, output.pid.to_string(), "{line}");
        let fields: Vec<&str> = rest.splitn(3, "][").collect();
        assert_eq!(fields.len(), 3, "{line}");
        assert!(fields[1].parse::<u32>().is_ok(), "tid: {line}");
        let location = fields[2].split("]:INFO: ").next().unwrap();
        let (file, number) = location.rsplit_once(':').unwrap();
        assert!(
            file.ends_with(".rs") && number.parse::<u32>().is_ok(),
            "{line}"
        );
    }
    assert!(
        info.iter().any(|l| l.ends_with(":INFO: shutdown complete")),
        "{stderr}"
    );
    assert!(!stderr.contains(":DEBUG: "), "{stderr}");
    wait_gone(&socket, "QMP socket");
}

/// What a finished child left, with its pid.
struct ChildOutput {
    pid: u32,
    status: std::process::ExitStatus,
    stderr: Vec<u8>,
}

trait WaitOk {
    fn wait_with_output_ok(self) -> ChildOutput;
}

impl WaitOk for Child {
    fn wait_with_output_ok(self) -> ChildOutput {
        let pid = self.id();
        let output = self.wait_with_output().expect("wait for stratovirt");
        ChildOutput {
            pid,
            status: output.status,
            stderr: output.stderr,
        }
    }
}

#[test]
fn the_qmp_socket_goes_after_quit_sigterm_and_a_failed_start() {
    let dir = scratch_dir("socket-gone");
    let kernel = spin_kernel(dir.path());
    let socket = dir.join("qmp.sock");
    let qmp_arg = format!("unix:{},server,nowait", socket.display());
    let base = |kernel: &Path| {
        let mut cmd = stratovirt();
        cmd.args([
            "-kernel",
            kernel.to_str().unwrap(),
            "-m",
            "128",
            "-qmp",
            &qmp_arg,
        ]);
        cmd
    };

    // quit, without negotiation; stop, cont and query-status answer first.
    let child = spawn(&mut base(&kernel));
    let mut qmp = Plain::connect(&socket);
    assert_eq!(qmp.execute("stop")["return"], serde_json::json!({}));
    assert_eq!(qmp.execute("query-status")["return"]["status"], "paused");
    assert_eq!(qmp.execute("cont")["return"], serde_json::json!({}));
    assert_eq!(qmp.execute("query-status")["return"]["status"], "running");
    assert!(qmp.execute("quit").get("return").is_some());
    let output = child.wait_with_output_ok();
    assert_eq!(output.status.code(), Some(0));
    assert!(!socket.exists(), "socket left after quit");

    // SIGTERM.
    let child = spawn(&mut base(&kernel));
    let _qmp = Plain::connect(&socket);
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let output = child.wait_with_output_ok();
    assert_eq!(output.status.code(), Some(0));
    assert!(!socket.exists(), "socket left after SIGTERM");

    // A start that fails after the socket was created (the kernel is loaded at start).
    let not_a_kernel = dir.join("notes.txt");
    std::fs::write(&not_a_kernel, "not a kernel\n").unwrap();
    let outcome = run(base(&not_a_kernel), QUICK);
    outcome.assert_one_line_error("not a linux kernel");
    assert!(!socket.exists(), "socket left after a failed start");
}

#[test]
fn daemonize_keeps_the_working_directory_and_reports_start_up() {
    let dir = scratch_dir("daemonize");
    spin_kernel(dir.path());
    // Relative paths everywhere: they are resolved in the caller's working directory.
    let mut cmd = stratovirt();
    cmd.current_dir(dir.path()).args([
        "-kernel",
        "spin.elf",
        "-m",
        "128",
        "-daemonize",
        "-pidfile",
        "vm.pid",
        "-qmp",
        "unix:qmp.sock,server,nowait",
        "-D",
        "vmm.log",
    ]);
    let outcome = run(cmd, QUICK);
    assert_eq!(
        outcome.status.and_then(|s| s.code()),
        Some(0),
        "{}",
        outcome.report()
    );
    assert!(outcome.stderr.is_empty(), "{}", outcome.report());
    // The caller returns once the VM runs: its files are there already.
    let pid = std::fs::read_to_string(dir.join("vm.pid")).expect("pid file in the cwd");
    assert!(dir.join("qmp.sock").exists(), "socket in the cwd");
    let log = std::fs::read_to_string(dir.join("vmm.log")).expect("log in the cwd");
    assert!(log.contains(":INFO: "), "{log}");
    let mut qmp = Plain::connect(&dir.join("qmp.sock"));
    assert_eq!(qmp.execute("query-status")["return"]["status"], "running");
    assert!(qmp.execute("quit").get("return").is_some());
    wait_gone(&dir.join("vm.pid"), "pid file");
    wait_gone(&dir.join("qmp.sock"), "QMP socket");
    let proc_dir = Path::new("/proc").join(pid.trim());
    let deadline = Instant::now() + QUICK;
    while proc_dir.exists() {
        assert!(
            Instant::now() < deadline,
            "daemon {} still running",
            pid.trim()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // A daemon that cannot start: the caller prints its error and exits 1.
    let mut cmd = stratovirt();
    cmd.current_dir(dir.path()).args([
        "-kernel",
        "missing.elf",
        "-m",
        "128",
        "-daemonize",
        "-qmp",
        "unix:qmp.sock,server,nowait",
    ]);
    run(cmd, QUICK).assert_one_line_error("missing.elf");
    assert!(!dir.join("qmp.sock").exists());

    // No console for a daemon.
    let mut cmd = stratovirt();
    cmd.current_dir(dir.path())
        .args(["-kernel", "spin.elf", "-daemonize", "-serial", "stdio"]);
    run(cmd, QUICK).assert_one_line_error("-daemonize cannot be used with -serial stdio");
}
