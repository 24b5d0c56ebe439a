"""`quimbi serve --workers N`: uvicorn's worker supervisor, each worker listening on a socket of its own.

uvicorn binds one listening socket in the parent and every worker accepts from it: the first worker to wake
takes most new connections. Clients that keep their connections open (as a service's HTTP pool does) then
load one worker while the others idle: 27 of 32 keep-alive connections on one of four workers in
benchmarks/api.py, which served 84% of the requests alone and fell behind at 1,000 requests/s. Here each
worker binds its own socket to the address with SO_REUSEPORT, and the kernel spreads new connections over the
workers by a hash of their addresses.

How: uvicorn's supervisor (`Multiprocess`: health checks, a dead worker restarted, signals) hands each worker
the parent's sockets through multiprocessing's pickling. It is handed a `SocketPerWorker` instead, which a
worker unpickles into a socket of its own, bound there. The sockets are created with IPPROTO_TCP so that the
accepted connections get TCP_NODELAY (uvicorn's own pre-bound socket leaves Nagle on: uvicorn issue 3149).
"""

from __future__ import annotations

import socket

import uvicorn
from uvicorn.supervisors import Multiprocess


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port) with SO_REUSEPORT, not yet listening (the server's event loop listens)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


class SocketPerWorker:
    """What the supervisor passes to each worker in place of a socket: unpickled there, a socket of its own."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port

    def __reduce__(self):
        return reuse_port_socket, (self.host, self.port)


def supported(port: int) -> bool:
    """SO_REUSEPORT spreads connections on Linux; a port of 0 would give each worker a port of its own."""
    return hasattr(socket, "SO_REUSEPORT") and port != 0


def address_in_use(host: str, port: int) -> bool:
    """Whether something already accepts on the address. A server of the same user with SO_REUSEPORT would let these
    workers bind beside it and share its connections; checked first so that a second `quimbi serve` on a port in
    use fails as it would without SO_REUSEPORT."""
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def run_workers(config: uvicorn.Config, host: str, port: int) -> None:
    """uvicorn's supervisor over `config.workers` workers, each listening on its own SO_REUSEPORT socket."""
    reuse_port_socket(host, port).close()  # an address that cannot be bound fails here, once, not in every worker
    Multiprocess(config, sockets=[SocketPerWorker(host, port)]).run()
