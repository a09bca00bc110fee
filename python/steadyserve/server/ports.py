"""Where the server's ports are had: bound by us, never shared by accident.

A port in use by another process is an error at start ("address already in use"),
never a silent SO_REUSEPORT share with a stranger. SO_REUSEPORT is used only by
``--workers N``, to spread connections over the workers, and only once the port has
been checked free with a bind without it: the group then holds our sockets only.
"""

from __future__ import annotations

import errno
import socket

from ..errors import SteadyServeError

BACKLOG = 1024


class StartupError(SteadyServeError):
    """The server could not start (a port could not be bound, ...)."""

    grpc_code = "UNAVAILABLE"


def hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _bind(sock: socket.socket, host: str, port: int, what: str) -> None:
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        why = "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror or exc
        raise StartupError(f"cannot bind the {what} port {hostport(host, port)}: {why}") from None


def listen_socket(host: str, port: int, what: str) -> socket.socket:
    """A socket bound to host:port (0: any free port) and listening, without
    SO_REUSEPORT. SO_REUSEADDR only lets a restart take the port while connections of
    the previous run linger in TIME_WAIT; it never lets two listeners share it.
    ``what`` names the port in errors ("gRPC", "HTTP")."""
    sock = socket.socket(_family(host), socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    _bind(sock, host, port, what)
    sock.listen(BACKLOG)
    return sock


def check_free(host: str, port: int, what: str) -> None:
    """StartupError naming host:port unless nothing listens there (port 0 is always free).

    Bound without SO_REUSEPORT, so a listener that would accept SO_REUSEPORT
    company still counts as in use."""
    if port == 0:
        return
    sock = socket.socket(_family(host), socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    _bind(sock, host, port, what)
    sock.close()


def reuseport_socket(host: str, port: int, what: str) -> socket.socket:
    """A socket bound to host:port with SO_REUSEPORT (not listening)."""
    sock = socket.socket(_family(host), socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    _bind(sock, host, port, what)
    return sock


def listen_group(host: str, port: int, count: int, what: str) -> list[socket.socket]:
    """``count`` listening sockets on one port (0: a free one), a SO_REUSEPORT group
    that the kernel spreads new connections over, and that holds no stranger: the
    port is checked free first, and a port 0 pick is one nobody holds."""
    check_free(host, port, what)
    group: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = reuseport_socket(host, port, what)
            group.append(sock)
            port = sock.getsockname()[1]  # the others join the first one's port
            sock.listen(BACKLOG)
    except BaseException:
        for sock in group:
            sock.close()
        raise
    return group
