#!/usr/bin/env python3
"""Drives a StratoVirt QMP socket with QEMU's own client library, qemu.qmp (PyPI).

Usage: qmp_client.py SOCKET_PATH

Run by tests/qmp_python_client.rs against a server whose machine is the in-test TestVm
(4 slots, 2 vCPUs, running). Exits 0 when every step matched, non-zero with a message
otherwise.
"""

import asyncio
import sys

from qemu.qmp import ExecuteError, QMPClient
from qemu.qmp.legacy import QEMUMonitorProtocol

TIMEOUT = 10


def check(condition, what):
    if not condition:
        raise AssertionError(what)


async def expect_error(qmp, error_class, cmd, arguments=None):
    try:
        await qmp.execute(cmd, arguments)
    except ExecuteError as err:
        check(err.error_class == error_class,
              f"{cmd}: expected {error_class}, got {err.error_class}: {err}")
        return str(err)
    raise AssertionError(f"{cmd}: expected {error_class}, got success")


async def next_event(listener, name):
    event = await asyncio.wait_for(listener.get(), TIMEOUT)
    check(event["event"] == name, f"expected event {name}, got {event}")
    stamp = event["timestamp"]
    check(isinstance(stamp["seconds"], int) and 0 <= stamp["microseconds"] < 1000000,
          f"bad timestamp in {event}")
    return event


async def main(path):
    qmp = QMPClient("stratovirt-qmp-test")
    # connect() reads the greeting and negotiates capabilities.
    await asyncio.wait_for(qmp.connect(path), TIMEOUT)
    greeting = qmp.greeting.QMP
    check(greeting.version["qemu"] == {"micro": 1, "minor": 0, "major": 5},
          f"greeting version {greeting.version}")
    check(greeting.version["package"].startswith("StratoVirt-"), "greeting package")
    check(list(greeting.capabilities) == [], "greeting capabilities")

    status = await qmp.execute("query-status")
    check(status == {"running": True, "singlestep": False, "status": "running"},
          f"query-status {status}")
    cpus = await qmp.execute("query-cpus")
    check([cpu["CPU"] for cpu in cpus] == [0, 1], f"query-cpus {cpus}")
    check(cpus[1]["qom_path"] == "/machine/unattached/device[1]", f"qom_path {cpus}")

    await expect_error(qmp, "CommandNotFound", "no-such-command")
    # StratoVirt answers qmp_capabilities whenever it is sent.
    ret = await qmp.execute("qmp_capabilities")
    check(ret == {}, f"second qmp_capabilities returned {ret}")
    version = await qmp.execute("query-version")
    check(version["qemu"] == {"micro": 1, "minor": 0, "major": 5}, f"query-version {version}")
    desc = await expect_error(qmp, "GenericError", "blockdev-add",
                              {"node-name": "d", "file": {"driver": "file"}})
    check("filename" in desc, f"missing member not named: {desc}")

    with qmp.listener() as listener:
        await qmp.execute("stop")
        await next_event(listener, "STOP")
        await expect_error(qmp, "GenericError", "stop")
        status = await qmp.execute("query-status")
        check(status["status"] == "paused" and not status["running"], f"paused {status}")
        await qmp.execute("cont")
        await next_event(listener, "RESUME")
        await expect_error(qmp, "GenericError", "cont")

        await qmp.execute("blockdev-add", {
            "node-name": "drive-1",
            "file": {"driver": "file", "filename": "/path/disk.img", "aio": "io_uring"},
            "cache": {"direct": True},
            "read-only": False,
        })
        await qmp.execute("device_add",
                          {"id": "drive-1", "driver": "virtio-blk-mmio", "addr": "0x1"})
        await expect_error(qmp, "DeviceNotFound", "device_del", {"id": "drive-2"})
        ret = await qmp.execute("device_del", {"id": "drive-1"})
        check(ret == {}, f"device_del returned {ret}")
        event = await next_event(listener, "DEVICE_DELETED")
        check(event["data"] == {"device": "drive-1", "path": "drive-1"}, f"{event}")
        await qmp.execute("blockdev-del", {"node-name": "drive-1"})

        ret = await qmp.execute("quit")
        check(ret == {}, f"quit returned {ret}")
        event = await next_event(listener, "SHUTDOWN")
        check(event["data"] == {"guest": False, "reason": "host-qmp-quit"}, f"{event}")

    await qmp.disconnect()


def legacy_client(path):
    """The synchronous wrapper QEMU's iotests use, on a fresh connection."""
    qmp = QEMUMonitorProtocol(path)
    greeting = qmp.connect(negotiate=True)
    check(greeting["QMP"]["capabilities"] == [], f"legacy greeting {greeting}")
    status = qmp.cmd("query-status")
    check(status["status"] == "running", f"legacy query-status {status}")
    reply = qmp.cmd_raw("device_del", {"id": "nothing"})
    check(reply["error"]["class"] == "DeviceNotFound", f"legacy device_del {reply}")
    qmp.cmd("stop")
    events = qmp.get_events(wait=TIMEOUT)
    check([e["event"] for e in events] == ["STOP"], f"legacy events {events}")
    qmp.cmd("cont")
    qmp.close()

    # StratoVirt's way: no negotiation at all.
    qmp = QEMUMonitorProtocol(path)
    qmp.connect(negotiate=False)
    status = qmp.cmd("query-status")
    check(status["status"] == "running", f"unnegotiated query-status {status}")
    qmp.close()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} SOCKET_PATH")
    asyncio.run(main(sys.argv[1]))
    legacy_client(sys.argv[1])
    print("qmp_client.py: all steps passed")
