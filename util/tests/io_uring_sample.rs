//! Runs the built `io_uring_sample` example on real files and checks what it prints.
//!
//! Examples get no `CARGO_BIN_EXE_*`, so the test builds the example with the cargo that
//! runs it, into the target dir this test binary lives in (which honours
//! `CARGO_TARGET_DIR`), and runs it from `<target>/<profile>/examples/`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// Builds the example once and returns its path.
fn example() -> &'static Path {
    static EXAMPLE: OnceLock<PathBuf> = OnceLock::new();
    EXAMPLE.get_or_init(|| {
        // <target>/<profile>/deps/<this test>
        let exe = std::env::current_exe().expect("test executable path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("<target>/<profile>");
        let target_dir = profile_dir.parent().expect("<target>");
        let profile = profile_dir
            .file_name()
            .and_then(|n| n.to_str())
            .expect("profile name");
        let profile = if profile == "debug" { "dev" } else { profile };
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args([
                "build",
                "--quiet",
                "-p",
                "util",
                "--example",
                "io_uring_sample",
                "--profile",
                profile,
            ])
            .arg("--target-dir")
            .arg(target_dir)
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building the example failed");
        let bin = profile_dir.join("examples").join("io_uring_sample");
        assert!(bin.is_file(), "{} missing", bin.display());
        bin
    })
}

fn run(args: &[&str]) -> Output {
    Command::new(example())
        .args(args)
        .output()
        .expect("run io_uring_sample")
}

/// A file in the crate's target tmp dir, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn with(name: &str, data: &[u8]) -> TempFile {
        let path = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("sample-{name}-{}", std::process::id()));
        std::fs::write(&path, data).expect("write temp file");
        TempFile(path)
    }

    fn arg(&self) -> &str {
        self.0.to_str().expect("UTF-8 path")
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn prints_the_first_100_bytes_res_and_user_data() {
    // Binary content, including bytes that are not valid UTF-8.
    let data: Vec<u8> = (0..300u32).map(|i| (i * 7 + 3) as u8).collect();
    let f = TempFile::with("big", &data);
    let out = run(&[f.arg()]);
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = out.stdout;
    assert!(
        contains(&stdout, b"cqe.res = 100\n"),
        "{}",
        String::from_utf8_lossy(&stdout)
    );
    assert!(
        contains(&stdout, b"cqe.user_data = 0x5a5a0001\n"),
        "the SQE's user_data comes back"
    );
    let mut expected = b"bytes read (100):\n".to_vec();
    expected.extend_from_slice(&data[..100]);
    expected.push(b'\n');
    assert!(
        stdout.ends_with(&expected),
        "exactly the first 100 bytes close the output"
    );
    assert!(!contains(&stdout, &data[100..110]), "nothing past byte 100");
}

#[test]
fn short_file_prints_what_it_has() {
    let f = TempFile::with("short", b"hello io_uring");
    let out = run(&[f.arg()]);
    assert!(out.status.success());
    assert!(contains(&out.stdout, b"cqe.res = 14\n"));
    assert!(out.stdout.ends_with(b"bytes read (14):\nhello io_uring\n"));
}

#[test]
fn missing_file_is_one_clear_line_and_a_failure() {
    let missing = Path::new(env!("CARGO_TARGET_TMPDIR")).join("sample-does-not-exist");
    let out = run(&[missing.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).expect("UTF-8 stderr");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr:?}");
    assert!(
        stderr.contains("cannot open") && stderr.contains("No such file"),
        "{stderr:?}"
    );
    assert!(out.stdout.is_empty());

    let out = run(&[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage"));
}
