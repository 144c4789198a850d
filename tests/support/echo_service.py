"""A tiny service to run as replicas in tests: ``python -m tests.support.echo_service --port P``.

``--mode http`` (the default) answers ``GET /healthz`` with ``ok`` and ``GET /whoami`` with its
pid, over HTTP/1.1 with keep-alive, so a test can tell which replica answered a request.
``--mode tcp`` echoes every byte back with backpressure and answers EOF with EOF, for relay
tests that need exact bytes and half-closes. ``--fail-with CODE`` prints numbered lines and
exits with CODE before listening, like a service that cannot start; ``--ignore-term`` makes it
ignore SIGTERM, like a service that hangs on shutdown.

:func:`command` builds the command line and :data:`ENV` lets the child import this package
wherever the test runs from; :func:`gone` tells whether a process has ended.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

FAILURE_LINES = 25
REPO = Path(__file__).resolve().parents[2]
ENV = {"PYTHONPATH": str(REPO)}


def command(port: int, *options: str) -> list[str]:
    """The command line of this service on ``port`` (a ReplicaSet's ``argv``)."""
    return [sys.executable, "-m", "tests.support.echo_service", "--port", str(port), *options]


def gone(pid: int) -> bool:
    """Whether process ``pid`` has ended. A zombie counts as ended: an orphan's exit is reaped
    by whatever adopted it, which in a container may take a while or never happen."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    # The state follows the parenthesised command name, which may itself contain spaces.
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        if self.path == "/healthz":
            body = b"ok"
        elif self.path == "/whoami":
            body = str(os.getpid()).encode()
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the replica's log is for start-up failures."""


def serve_http(port: int) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", port), _Handler)
    server.daemon_threads = True
    print(f"http on 127.0.0.1:{port}, pid {os.getpid()}", flush=True)
    server.serve_forever()


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(64 * 1024):
            writer.write(chunk)
            await writer.drain()
        writer.write_eof()
        await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def serve_tcp(port: int) -> None:
    server = await asyncio.start_server(_echo, "127.0.0.1", port)
    print(f"tcp echo on 127.0.0.1:{port}, pid {os.getpid()}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mode", choices=("http", "tcp"), default="http")
    parser.add_argument("--fail-with", type=int, default=None)
    parser.add_argument("--ignore-term", action="store_true")
    args = parser.parse_args()
    if args.ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if args.fail_with is not None:
        for n in range(1, FAILURE_LINES + 1):
            print(f"start-up line {n}", file=sys.stderr)
        sys.exit(args.fail_with)
    if args.mode == "http":
        serve_http(args.port)
    else:
        asyncio.run(serve_tcp(args.port))


if __name__ == "__main__":
    main()
