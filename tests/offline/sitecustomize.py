"""The network is off for every Python process of the test suite (pytest itself, the notebook kernels nbval starts,
the JupyterLab server, the CLIs the tests run): a connection or a name lookup that would leave this machine fails at
once with NetworkDisabled. Loopback addresses (Jupyter's kernels, the test server) and Unix sockets stay allowed.

The root conftest.py installs it in the pytest process and puts this directory on PYTHONPATH, so that Python runs
this file (as `sitecustomize`) at the start of every child process too. The course never needs a download: if a
library tries one, the test that caused it fails here instead of hanging or silently using a cache.
"""
import ipaddress
import socket

MESSAGE = ("network access to {!r} refused: the course runs offline (no model hub, no downloads); "
           "everything it needs is trained from scratch or ships in data/")


class NetworkDisabled(ConnectionRefusedError):
    """A connection or lookup that would leave the machine."""


def _is_local(host) -> bool:
    if host is None:
        return True
    host = host.decode() if isinstance(host, bytes) else str(host)
    if host in ("", "localhost", "localhost.localdomain") or host == _HOSTNAME:
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback  # "127.0.0.1", "::1", "fe80::1%eth0"
    except ValueError:
        return False  # any other host name


def _check(family, address) -> None:
    if family in (socket.AF_INET, socket.AF_INET6) and isinstance(address, tuple) and not _is_local(address[0]):
        raise NetworkDisabled(MESSAGE.format(address))


def install() -> None:
    """Patch socket's connect, connect_ex, sendto and getaddrinfo (idempotent)."""
    if getattr(socket, "_course_offline", False):
        return
    connect, connect_ex, sendto, getaddrinfo = (socket.socket.connect, socket.socket.connect_ex,
                                                socket.socket.sendto, socket.getaddrinfo)

    def guarded_connect(self, address):
        _check(self.family, address)
        return connect(self, address)

    def guarded_connect_ex(self, address):
        _check(self.family, address)
        return connect_ex(self, address)

    def guarded_sendto(self, data, *args):
        _check(self.family, args[-1])  # sendto(data, address) or sendto(data, flags, address)
        return sendto(self, data, *args)

    def guarded_getaddrinfo(host, *args, **kwargs):
        if not _is_local(host):
            raise NetworkDisabled(MESSAGE.format(host))
        return getaddrinfo(host, *args, **kwargs)

    socket.socket.connect, socket.socket.connect_ex = guarded_connect, guarded_connect_ex
    socket.socket.sendto, socket.getaddrinfo = guarded_sendto, guarded_getaddrinfo
    socket._course_offline = True


_HOSTNAME = socket.gethostname()  # this machine's own name resolves locally (/etc/hosts)
install()
