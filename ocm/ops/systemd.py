"""
systemd's service notification protocol (sd_notify(3)), as far as ocm uses
it: READY=1 once both ports listen, STATUS= lines, STOPPING=1 when rooms
begin to close, and WATCHDOG=1 from the reactor at half of WatchdogSec.

The protocol is one datagram of newline-separated assignments to the Unix
socket named in $NOTIFY_SOCKET; these few lines are all of it that ocm needs
(see docs/operations.md for why no library). Without $NOTIFY_SOCKET every
method does nothing, so nothing changes when ocm is not run by systemd.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from typing import Any

from twisted.internet.task import LoopingCall
from twisted.logger import Logger


class Notifier:
    """Tells systemd how the daemon is doing; a no-op outside systemd."""

    log = Logger()

    def __init__(self, address: str | bytes | None, watchdog_usec: int | None = None) -> None:
        self.address = address
        # Seconds between WATCHDOG=1 messages, or None: systemd did not ask.
        self.watchdog_interval = watchdog_usec / 2e6 if address and watchdog_usec else None
        self._socket: socket.socket | None = None
        self._watchdog: LoopingCall | None = None
        self._failed = False

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None, pid: int | None = None) -> Notifier:
        """
        Read $NOTIFY_SOCKET and $WATCHDOG_USEC; the watchdog is ours only if
        $WATCHDOG_PID is unset or names this process (sd_watchdog_enabled(3)).
        """
        env = os.environ if environ is None else environ
        raw = env.get("NOTIFY_SOCKET", "")
        address: str | bytes | None = None
        if raw.startswith("@"):
            address = b"\0" + raw[1:].encode()  # an abstract socket
        elif raw.startswith("/"):
            address = raw
        elif raw:
            cls.log.warn("NOTIFY_SOCKET={raw!r} is not a Unix socket path; not notifying systemd", raw=raw)
        usec: int | None = None
        try:
            usec = int(env.get("WATCHDOG_USEC", "")) or None
            owner = env.get("WATCHDOG_PID")
            if owner and int(owner) != (os.getpid() if pid is None else pid):
                usec = None
        except ValueError:
            usec = None
        return cls(address, usec)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *assignments: str) -> bool:
        """Send one message (e.g. C{"READY=1", "STATUS=..."}); never blocks, never raises."""
        if self.address is None:
            return False
        message = "\n".join(a.replace("\n", " ") for a in assignments).encode()
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._socket.setblocking(False)
            self._socket.sendto(message, self.address)
        except OSError as e:
            # A full or vanished socket must not stop the daemon; say so once.
            if not self._failed:
                self._failed = True
                self.log.warn("cannot notify systemd at {address!r}: {error}", address=self.address, error=e)
            return False
        return True

    def start_watchdog(self, clock: Any) -> None:
        """WATCHDOG=1 from a reactor timer: a wedged reactor stops sending it."""
        if self.watchdog_interval is None or self._watchdog is not None:
            return
        self._watchdog = LoopingCall(self.notify, "WATCHDOG=1")
        self._watchdog.clock = clock
        self._watchdog.start(self.watchdog_interval, now=True)

    def stop_watchdog(self) -> None:
        if self._watchdog is not None and self._watchdog.running:
            self._watchdog.stop()
        self._watchdog = None

    def close(self) -> None:
        self.stop_watchdog()
        if self._socket is not None:
            self._socket.close()
            self._socket = None


# -- socket activation ---------------------------------------------------------


def inherited() -> Any:
    """
    The sockets systemd passed this process. Twisted reads (and, against a
    second reader, clears) C{$LISTEN_FDS} once, when its endpoints module
    is imported, for its own C{systemd:} endpoints: this is that reading, so
    both agree.
    """
    from twisted.internet.endpoints import _SystemdParser

    return _SystemdParser._sddaemon


def inherited_fd(spec: str, fds: Any = None) -> int:
    """
    The descriptor a C{systemd:index=N} or C{systemd:name=NAME} spec names
    among those systemd passed (C{$LISTEN_FDS}, C{$LISTEN_FDNAMES}, for
    this very process: C{$LISTEN_PID}); L{ValueError} saying why not.
    """
    fields = dict(part.split("=", 1) for part in spec.split(":")[1:] if "=" in part)
    fds = inherited() if fds is None else fds
    if "name" in fields:
        named = fds.inheritedNamedDescriptors()
        if fields["name"] not in named:
            raise ValueError(f"systemd passed no socket named {fields['name']!r} "
                             f"(names: {', '.join(named) or 'none'})")
        return named[fields["name"]]
    if "index" in fields:
        descriptors = fds.inheritedDescriptors()
        try:
            return descriptors[int(fields["index"])]
        except (ValueError, IndexError):
            raise ValueError(f"systemd passed {len(descriptors)} sockets, so no index {fields['index']!r}")
    raise ValueError("give systemd:index=N or systemd:name=NAME")


def socket_family(fd: int) -> int:
    """The address family of an inherited socket (it stays open)."""
    sock = socket.socket(fileno=fd)
    try:
        return sock.family
    finally:
        sock.detach()


def domain_name(fd: int) -> str:
    """Twisted's C{systemd:} endpoint's C{domain=} for the socket C{fd}."""
    return {socket.AF_INET: "INET", socket.AF_INET6: "INET6", socket.AF_UNIX: "UNIX"}.get(
        socket_family(fd), "INET"
    )
