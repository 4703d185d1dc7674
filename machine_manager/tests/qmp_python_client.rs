//! QEMU's own Python QMP client (`qemu.qmp` from PyPI) against our server: greeting,
//! negotiation, commands, error classes and events as a real QMP client library sees them.
//!
//! Needs the virtual environment with the package that `scripts/setup-host.sh` makes.

mod qmp_common;

use std::path::Path;
use std::process::Command;

use qmp_common::Harness;
use util::testing::qmp_python;

#[test]
fn qemu_qmp_python_client_drives_the_server() {
    let python = qmp_python();
    let harness = Harness::start("python");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/qmp_client.py");
    let output = Command::new(python)
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
