#!/usr/bin/env python3
"""Reads query-block and query-blockstats with QEMU's own client library, qemu.qmp.

Usage: block_stats.py SOCKET_PATH

Run by block_stats.rs once the in-process guest driver has finished its requests. Prints
{"block": ..., "blockstats": ...} as one JSON line, then quits the VM.
"""

import asyncio
import json
import sys

from qemu.qmp import QMPClient

TIMEOUT = 10


async def main(path):
    qmp = QMPClient("stratovirt-block-stats")
    await asyncio.wait_for(qmp.connect(path), TIMEOUT)
    block = await qmp.execute("query-block")
    stats = await qmp.execute("query-blockstats")
    print(json.dumps({"block": block, "blockstats": stats}))
    await qmp.execute("quit")
    await qmp.disconnect()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
