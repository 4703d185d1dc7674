//! The Python that runs QEMU's own QMP client library (`qemu.qmp`) in tests.

use std::path::PathBuf;
use std::process::Command;

/// What to run when the library is missing.
pub const QMP_PYTHON_SETUP: &str = "scripts/setup-host.sh (a virtual environment with qemu.qmp)";

/// The interpreter with `qemu.qmp`: `$STRATOVIRT_PYTHON`, else the virtual environment that
/// `scripts/setup-host.sh` makes in the cache (`$STRATOVIRT_CACHE`, default
/// `~/.cache/stratovirt`). Panics, naming the set-up step, when it cannot import the library.
pub fn qmp_python() -> PathBuf {
    let python = std::env::var_os("STRATOVIRT_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let cache = std::env::var_os("STRATOVIRT_CACHE")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                        .join(".cache/stratovirt")
                });
            cache.join("venv/bin/python3")
        });
    let probe = Command::new(&python)
        .args(["-c", "import qemu.qmp"])
        .output();
    match probe {
        Ok(out) if out.status.success() => python,
        Ok(out) => panic!(
            "{} cannot import qemu.qmp; run {QMP_PYTHON_SETUP}\n{}",
            python.display(),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => panic!(
            "cannot run {} ({e}); run {QMP_PYTHON_SETUP}",
            python.display()
        ),
    }
}
