# -*- test-case-name: tests.unit.test_sdnotify -*-
"""
systemd's notify protocol (sd_notify(3)), written out in a few lines rather
than depending on libsystemd: one datagram per message to the unix socket
named by C{NOTIFY_SOCKET}, from a non-blocking socket, so the reactor never
waits on systemd.  Without C{NOTIFY_SOCKET} (not under systemd, or a unit
that is not C{Type=notify}) every method does nothing.
"""

import errno
import os
import socket
import time

from twisted.internet.task import LoopingCall
from twisted.logger import Logger

_ENVIRONMENT = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def _monotonicUsec():
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class Notifier:
    """
    Tells the service manager how proxyd is doing.  Sending never raises
    and never blocks: a datagram that cannot be sent (socket gone, queue
    full) is dropped, since a late or lost notification is better than a
    stalled proxy, and the first failure of a run of failures is logged.
    """

    _log = Logger()

    def __init__(self, address=None, watchdogUsec=None, reactor=None, monotonicUsec=_monotonicUsec):
        """
        @param address: C{NOTIFY_SOCKET}'s value: a path, or C{@name} for an
            abstract socket; L{None} makes this notifier a no-op.
        @param watchdogUsec: C{WATCHDOG_USEC}, or L{None} for no watchdog.
        @param reactor: the default reactor for L{startWatchdog}.
        """
        if address and address.startswith("@"):
            address = "\0" + address[1:]
        elif address and not address.startswith("/"):
            # systemd >= 254 also knows vsock:...; sd_notify refuses others.
            self._log.warn("NOTIFY_SOCKET={a!r} is not a unix socket: not notifying", a=address)
            address = None
        self.address = address or None
        self.watchdogUsec = watchdogUsec
        self._reactor = reactor
        self._monotonicUsec = monotonicUsec
        self._socket = None
        self._failing = False
        self._watchdog = None

    @classmethod
    def fromEnvironment(cls, environ=os.environ, reactor=None, unsetEnvironment=False):
        """
        Read C{NOTIFY_SOCKET}, C{WATCHDOG_USEC} and C{WATCHDOG_PID}.

        @param unsetEnvironment: remove them from C{environ}, as sd_notify's
            C{unset_environment} does, so that child processes do not
            notify in proxyd's name.  Off by default: proxyd starts no
            children, and the variables help whoever debugs the process.
        """
        address = environ.get("NOTIFY_SOCKET")
        watchdogUsec = None
        pid = environ.get("WATCHDOG_PID")
        if environ.get("WATCHDOG_USEC") and (not pid or pid == str(os.getpid())):
            try:
                watchdogUsec = int(environ["WATCHDOG_USEC"])
            except ValueError:
                cls._log.warn("WATCHDOG_USEC={v!r} is not a number: no watchdog", v=environ["WATCHDOG_USEC"])
            else:
                watchdogUsec = watchdogUsec if watchdogUsec > 0 else None
        if unsetEnvironment:
            for name in _ENVIRONMENT:
                environ.pop(name, None)
        return cls(address, watchdogUsec if address else None, reactor)

    enabled = property(lambda self: self.address is not None)

    def notify(self, *assignments):
        """
        Send C{KEY=VALUE} lines in one datagram.

        @return: whether the datagram was sent.
        """
        if self.address is None:
            return False
        data = "\n".join(assignments).encode("utf-8")
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._socket.setblocking(False)
            self._socket.sendto(data, self.address)
        except OSError as e:
            if not self._failing:
                self._failing = True
                self._log.warn(
                    "Could not notify systemd at {address} ({why}); dropping notifications until it works",
                    address=self.address.replace("\0", "@"),
                    why=errno.errorcode.get(e.errno, str(e)) if e.errno else str(e),
                )
            return False
        self._failing = False
        return True

    def ready(self, status=None, mainPID=None):
        """
        Every listener is bound: systemd starts the units ordered after us.

        @param mainPID: a pid to announce as the main process (or C{True}
            for this one), for when systemd started a wrapper that is not us.
        """
        lines = ["READY=1"]
        if status is not None:
            lines.append("STATUS=" + status)
        if mainPID is not None:
            lines.append("MAINPID=%d" % (os.getpid() if mainPID is True else mainPID,))
        return self.notify(*lines)

    def reloading(self):
        """
        A reload began; L{ready} ends it.  C{MONOTONIC_USEC} is what
        systemd >= 253 requires with C{Type=notify-reload}; older ones
        ignore it.
        """
        return self.notify("RELOADING=1", "MONOTONIC_USEC=%d" % (self._monotonicUsec(),))

    def stopping(self, status=None):
        """Shutdown began (the drain): systemd shows "deactivating"."""
        return self.notify("STOPPING=1", *(["STATUS=" + status] if status is not None else []))

    def status(self, text):
        """A free-form line for C{systemctl status}."""
        return self.notify("STATUS=" + text)

    def startWatchdog(self, reactor=None):
        """
        Send C{WATCHDOG=1} every half C{WATCHDOG_USEC} (sd_watchdog_enabled's
        advice), from the reactor: a wedged reactor stops the pings and
        systemd restarts us.  Does nothing without a watchdog.
        """
        if self.watchdogUsec is None or self._watchdog is not None:
            return
        self._watchdog = LoopingCall(self.notify, "WATCHDOG=1")
        if reactor is None and self._reactor is None:
            from twisted.internet import reactor
        self._watchdog.clock = reactor or self._reactor
        self._watchdog.start(self.watchdogUsec / 2e6, now=True)

    def stopWatchdog(self):
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is not None and watchdog.running:
            watchdog.stop()

    def close(self):
        self.stopWatchdog()
        if self._socket is not None:
            self._socket.close()
            self._socket = None
