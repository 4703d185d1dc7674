#!/usr/bin/env python3
"""Reads query-block and query-blockstats with QEMU's own client library, qemu.qmp.

Usage: block_stats.py SOCKET_PATH

Run by block_stats.rs once the in-process guest driver has finished its requests. Reads both,
changes the drive's limits with block_set_io_throttle (by drive name, as QEMU's `device`),
reads query-block again, and prints {"block": ..., "blockstats": ..., "block_after": ...,
"unknown": ERROR_CLASS} as one JSON line, then quits the VM.
"""

import asyncio
import json
import sys

from qemu.qmp import ExecuteError, QMPClient

TIMEOUT = 10


async def main(path):
    qmp = QMPClient("stratovirt-block-stats")
    await asyncio.wait_for(qmp.connect(path), TIMEOUT)
    block = await qmp.execute("query-block")
    stats = await qmp.execute("query-blockstats")
    limits = {"bps": 0, "bps_rd": 0, "bps_wr": 0, "iops": 500, "iops_rd": 0, "iops_wr": 0,
              "iops_max": 1000, "iops_max_length": 2}
    await qmp.execute("block_set_io_throttle", {"device": "d0", **limits})
    block_after = await qmp.execute("query-block")
    try:
        await qmp.execute("block_set_io_throttle", {"id": "nothing", **limits})
        unknown = None
    except ExecuteError as err:
        unknown = err.error_class
    print(json.dumps({"block": block, "blockstats": stats, "block_after": block_after,
                      "unknown": unknown}))
    await qmp.execute("quit")
    await qmp.disconnect()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
