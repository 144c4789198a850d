"""A stack stand-in for the parent-death test: ``python -m tests.support.replica_parent DIR``
starts two echo-service replicas (logs in DIR), prints their pids as a JSON list and waits
until it is killed; the test SIGKILLs it and expects the replicas to end too."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from callplane_dev.replicas import HttpReady, ReplicaSet
from tests.support.echo_service import ENV, command


async def main(log_dir: Path) -> None:
    replicas = ReplicaSet("orphan", command, ENV, 2, HttpReady("/healthz"), log_dir)
    await replicas.start()
    print(json.dumps([replica.pid for replica in replicas.replicas]), flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1])))
