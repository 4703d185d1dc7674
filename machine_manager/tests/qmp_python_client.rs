//! QEMU's own Python QMP client (`qemu.qmp` from PyPI) against our server: greeting,
//! negotiation, commands, error classes and events as a real QMP client library sees them.
//!
//! Needs `python3` with the package: `python3 -m pip install 'qemu.qmp==0.0.6'`.

mod qmp_common;

use std::path::Path;
use std::process::Command;

use qmp_common::Harness;

/// Install command printed when the client library is missing.
const INSTALL: &str = "python3 -m pip install 'qemu.qmp==0.0.6'";

#[test]
fn qemu_qmp_python_client_drives_the_server() {
    let probe = Command::new("python3")
        .args(["-c", "import qemu.qmp"])
        .output()
        .unwrap_or_else(|e| panic!("python3 is needed for this test ({e}); then run: {INSTALL}"));
    assert!(
        probe.status.success(),
        "the Python package qemu.qmp is missing; install it with: {INSTALL}\n{}",
        String::from_utf8_lossy(&probe.stderr)
    );

    let harness = Harness::start("python");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/qmp_client.py");
    let output = Command::new("python3")
        .arg(&script)
        .arg(&harness.path)
        .output()
        .expect("run qmp_client.py");
    assert!(
        output.status.success(),
        "qmp_client.py failed ({}):\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("all steps passed"));

    let vm = harness.vm();
    assert_eq!(vm.quit_calls, 1, "{:?}", vm.calls);
    assert_eq!(
        vm.calls,
        [
            "stop",
            "stop",
            "cont",
            "cont",
            "blockdev_add drive-1",
            "device_add drive-1 1",
            "device_del drive-2",
            "device_del drive-1",
            "blockdev_del drive-1",
            "quit",
            "device_del nothing",
            "stop",
            "cont",
        ]
    );
}
