"""Start a real `quimbi serve` in a child process on a free local port and wait until /health answers
(the API and page tests and benchmarks/api.py drive the server a user starts, not an in-process app)."""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx


@dataclass
class LocalServer:
    process: subprocess.Popen
    port: int
    stdout: str = ""  # filled when the server has stopped (capture=True)
    stderr: str = ""

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def local_server(warehouse_url: str, *, env: dict[str, str] | None = None, args: tuple[str, ...] = (), capture: bool = False,
                 start_timeout_s: float = 60.0) -> Iterator[LocalServer]:
    """`quimbi serve --warehouse URL --port <free> [args]`, stopped on exit. With `capture` its output is kept
    (LocalServer.stdout / stderr, readable after the block); otherwise discarded. Raises RuntimeError when the
    server exits or does not answer within `start_timeout_s`."""
    port = free_port()
    # Captured output goes to files, not pipes: nobody reads a pipe while the server runs, and a server logging a
    # line per request would fill one (64 KiB) within a thousand requests and block.
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        sinks = (out, err) if capture else (subprocess.DEVNULL, subprocess.DEVNULL)
        process = subprocess.Popen([sys.executable, "-m", "quimbi_pipeline.cli", "serve", "--warehouse", warehouse_url, "--port", str(port), *args],
                                   env=env, stdout=sinks[0], stderr=sinks[1], text=True)
        server = LocalServer(process, port)
        try:
            _wait_healthy(server, start_timeout_s)
            yield server
        finally:
            process.terminate()
            process.wait(timeout=30)
            if capture:
                out.seek(0)
                err.seek(0)
                server.stdout, server.stderr = out.read(), err.read()


def _wait_healthy(server: LocalServer, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"quimbi serve exited with code {server.process.returncode} before answering /health")
        try:
            httpx.get(server.base + "/health", timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.2)
    raise RuntimeError(f"quimbi serve did not answer /health within {timeout_s:.0f} s")
