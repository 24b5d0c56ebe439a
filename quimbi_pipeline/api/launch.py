"""Start a real `quimbi serve` in a child process on a free local port and wait until /health answers and, with
several workers, until each listens (the API and page tests and benchmarks/api.py drive the server a user starts,
not an in-process app). On Linux the workers' sockets are read from /proc."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from quimbi_pipeline.api import workers as api_workers


@dataclass
class LocalServer:
    process: subprocess.Popen
    port: int
    stdout: str = ""  # filled when the server has stopped (capture=True)
    stderr: str = ""

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def connections_per_worker(self) -> list[int]:
        """Established connections on the port held by each worker process that holds any, most first (Linux)."""
        established = tcp_sockets(self.port, ESTABLISHED)
        counts = []
        for pid in _children(self.process.pid):
            held = 0
            with contextlib.suppress(OSError):  # a process that ended meanwhile
                for fd in Path(f"/proc/{pid}/fd").iterdir():
                    with contextlib.suppress(OSError):  # a descriptor closed meanwhile
                        held += os.readlink(fd) in established
            if held:
                counts.append(held)
        return sorted(counts, reverse=True)


ESTABLISHED, LISTENING = "01", "0A"  # /proc/net/tcp's states


def tcp_sockets(port: int, state: str) -> set[str]:
    """This machine's IPv4 TCP sockets on a local port in a state, as their descriptors' link text (socket:[inode])."""
    rows = [line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:]]
    return {f"socket:[{r[9]}]" for r in rows if r[3] == state and int(r[1].rsplit(":", 1)[1], 16) == port}


def _children(parent: int) -> list[int]:
    children = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):  # a process that ended meanwhile
            if entry.name.isdigit() and Path(entry, "stat").read_text().rsplit(")", 1)[1].split()[1] == str(parent):
                children.append(int(entry.name))
    return children


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def local_server(warehouse_url: str, *, env: dict[str, str] | None = None, args: tuple[str, ...] = (), workers: int = 1,
                 capture: bool = False, start_timeout_s: float = 60.0) -> Iterator[LocalServer]:
    """`quimbi serve --warehouse URL --port <free> [--workers N] [args]`, stopped on exit. With `capture` its output is
    kept (LocalServer.stdout / stderr, readable after the block); otherwise discarded. Raises RuntimeError when the
    server exits or does not answer within `start_timeout_s`. /health answers as soon as the first worker listens:
    with several, on Linux, it also waits until each listens on its own socket, so that no connection made next waits
    on a worker still starting and every worker takes its share."""
    port = free_port()
    if workers > 1:
        args = ("--workers", str(workers), *args)
    # Captured output goes to files, not pipes: nobody reads a pipe while the server runs, and a server logging a
    # line per request would fill one (64 KiB) within a thousand requests and block.
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        sinks = (out, err) if capture else (subprocess.DEVNULL, subprocess.DEVNULL)
        process = subprocess.Popen([sys.executable, "-m", "quimbi_pipeline.cli", "serve", "--warehouse", warehouse_url, "--port", str(port), *args],
                                   env=env, stdout=sinks[0], stderr=sinks[1], text=True)
        server = LocalServer(process, port)
        try:
            deadline = time.monotonic() + start_timeout_s
            _wait_until(server, lambda: _answers_health(server), deadline, "answering /health")
            if workers > 1 and api_workers.supported(port) and Path("/proc/net/tcp").exists():
                _wait_until(server, lambda: len(tcp_sockets(port, LISTENING)) >= workers, deadline, f"listening on all {workers} workers' sockets")
            yield server
        finally:
            process.terminate()
            process.wait(timeout=30)
            if capture:
                out.seek(0)
                err.seek(0)
                server.stdout, server.stderr = out.read(), err.read()


def _answers_health(server: LocalServer) -> bool:
    try:
        httpx.get(server.base + "/health", timeout=1)
        return True
    except httpx.TransportError:
        return False


def _wait_until(server: LocalServer, ready: Callable[[], bool], deadline: float, what: str) -> None:
    """Poll `ready` until it holds; RuntimeError when the server exits first or the deadline passes."""
    while not ready():
        if server.process.poll() is not None:
            raise RuntimeError(f"quimbi serve exited with code {server.process.returncode}, not yet {what}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"quimbi serve was not {what} within the start timeout")
        time.sleep(0.2)
