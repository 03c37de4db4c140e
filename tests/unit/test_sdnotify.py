"""
Tests for L{proxyd.sdnotify}: against real datagram sockets, as systemd
would receive them.
"""

import os
import socket
import tempfile
import time

from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from proxyd.sdnotify import Notifier


class _Receiver:
    """A bound AF_UNIX datagram socket standing in for systemd's."""

    def __init__(self, testCase, abstract=False):
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        testCase.addCleanup(self.socket.close)
        if abstract:
            name = "proxyd-test-%d-%d" % (os.getpid(), time.monotonic_ns())
            self.socket.bind("\0" + name)
            self.address = "@" + name
        else:
            directory = tempfile.mkdtemp()
            self.address = os.path.join(directory, "notify")
            self.socket.bind(self.address)
            testCase.addCleanup(os.rmdir, directory)
            testCase.addCleanup(os.unlink, self.address)
        self.socket.setblocking(False)

    def messages(self):
        """Every datagram received so far, each as a list of lines."""
        out = []
        while True:
            try:
                out.append(self.socket.recv(4096).decode("utf-8").split("\n"))
            except BlockingIOError:
                return out


class NotifierTests(SynchronousTestCase):
    def notifier(self, environ, reactor=None):
        notifier = Notifier.fromEnvironment(environ, reactor)
        self.addCleanup(notifier.close)
        return notifier

    def assertLifecycle(self, abstract):
        receiver = _Receiver(self, abstract)
        notifier = self.notifier({"NOTIFY_SOCKET": receiver.address})
        self.assertTrue(notifier.enabled)
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.assertTrue(notifier.ready())
        self.assertTrue(notifier.reloading())
        self.assertTrue(notifier.ready(status="reloaded"))
        self.assertTrue(notifier.stopping())
        after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        messages = receiver.messages()
        self.assertEqual(
            [m[0] for m in messages], ["READY=1", "RELOADING=1", "READY=1", "STOPPING=1"]
        )
        self.assertEqual(messages[0], ["READY=1"])
        self.assertEqual(len(messages[1]), 2)
        key, _, usec = messages[1][1].partition("=")
        self.assertEqual(key, "MONOTONIC_USEC")
        self.assertTrue(before <= int(usec) <= after, (before, usec, after))
        self.assertEqual(messages[2], ["READY=1", "STATUS=reloaded"])
        self.assertEqual(messages[3], ["STOPPING=1"])

    def test_pathSocket(self):
        """
        READY=1, RELOADING=1 with MONOTONIC_USEC (CLOCK_MONOTONIC, µs),
        READY=1 and STOPPING=1 arrive in order at a socket file.
        """
        self.assertLifecycle(abstract=False)

    def test_abstractSocket(self):
        """
        A NOTIFY_SOCKET starting with @ names an abstract socket.
        """
        self.assertLifecycle(abstract=True)

    def test_statusAndMainPID(self):
        receiver = _Receiver(self)
        notifier = self.notifier({"NOTIFY_SOCKET": receiver.address})
        notifier.status("draining 3 connections")
        notifier.ready(status="listening", mainPID=True)
        notifier.ready(mainPID=1234)
        self.assertEqual(
            receiver.messages(),
            [
                ["STATUS=draining 3 connections"],
                ["READY=1", "STATUS=listening", "MAINPID=%d" % os.getpid()],
                ["READY=1", "MAINPID=1234"],
            ],
        )

    def test_noNotifySocket(self):
        """
        Without NOTIFY_SOCKET every call is a no-op: no socket, no watchdog.
        """
        clock = Clock()
        notifier = self.notifier({"WATCHDOG_USEC": "2000000"}, clock)
        self.assertFalse(notifier.enabled)
        self.assertFalse(notifier.ready())
        self.assertFalse(notifier.reloading())
        self.assertFalse(notifier.stopping())
        notifier.startWatchdog()
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertIsNone(notifier._socket)

    def test_notAUnixSocket(self):
        """
        An address sd_notify would refuse (relative, vsock:) disables the
        notifier with a warning.
        """
        logs = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        notifier = self.notifier({"NOTIFY_SOCKET": "relative/notify"})
        self.assertFalse(notifier.enabled)
        self.assertFalse(notifier.ready())
        self.assertEqual(len(logs), 1)

    def test_nowhereLogsOnce(self):
        """
        A NOTIFY_SOCKET that nobody listens on (ENOENT; ECONNREFUSED for a
        file with no socket bound) never raises, and is logged once for a
        run of failures, not once per message.
        """
        logs = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        directory = tempfile.mkdtemp()
        self.addCleanup(os.rmdir, directory)
        notifier = self.notifier({"NOTIFY_SOCKET": os.path.join(directory, "nobody")})
        self.assertFalse(notifier.ready())
        self.assertFalse(notifier.reloading())
        self.assertFalse(notifier.stopping())
        self.assertEqual(len(logs), 1)
        self.assertIn("ENOENT", logs[0]["why"])

        # Bound once, then closed: the file stays, nobody receives.
        receiver = _Receiver(self)
        notifier = self.notifier({"NOTIFY_SOCKET": receiver.address})
        receiver.socket.close()
        self.assertFalse(notifier.ready())
        self.assertFalse(notifier.ready())
        self.assertEqual(len(logs), 2)
        self.assertIn("ECONNREFUSED", logs[1]["why"])

    def test_fullQueueDrops(self):
        """
        When systemd does not read (its queue is full), the send would
        block: the message is dropped instead (EAGAIN), logged once, and
        sending works again once there is room.
        """
        logs = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        receiver = _Receiver(self)
        notifier = self.notifier({"NOTIFY_SOCKET": receiver.address})
        sent = 0
        while notifier.notify("WATCHDOG=1"):
            sent += 1
            self.assertLess(sent, 100000)
        self.assertFalse(notifier.notify("WATCHDOG=1"))
        self.assertEqual(len(logs), 1)
        self.assertEqual(len(receiver.messages()), sent)
        self.assertTrue(notifier.notify("READY=1"))
        self.assertEqual(receiver.messages(), [["READY=1"]])

    def test_watchdog(self):
        """
        WATCHDOG_USEC=2000000: WATCHDOG=1 at once and then every second of
        the given reactor's time, until stopWatchdog.
        """
        receiver = _Receiver(self)
        clock = Clock()
        notifier = self.notifier(
            {"NOTIFY_SOCKET": receiver.address, "WATCHDOG_USEC": "2000000"}, clock
        )
        notifier.startWatchdog()
        self.assertEqual(receiver.messages(), [["WATCHDOG=1"]])
        clock.advance(0.5)
        self.assertEqual(receiver.messages(), [])
        for _ in range(3):
            clock.advance(0.5)
            self.assertEqual(receiver.messages(), [["WATCHDOG=1"]])
            clock.advance(0.5)
            self.assertEqual(receiver.messages(), [])
        notifier.stopWatchdog()
        clock.advance(10)
        self.assertEqual(receiver.messages(), [])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_watchdogReactorArgument(self):
        """
        startWatchdog(reactor) uses the reactor given to it.
        """
        receiver = _Receiver(self)
        clock = Clock()
        notifier = self.notifier(
            {"NOTIFY_SOCKET": receiver.address, "WATCHDOG_USEC": "500000", "WATCHDOG_PID": str(os.getpid())}
        )
        notifier.startWatchdog(clock)
        clock.advance(0.25)
        clock.advance(0.25)
        self.assertEqual(len(receiver.messages()), 3)
        notifier.close()
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_watchdogForAnotherProcess(self):
        """
        WATCHDOG_PID naming another process: the watchdog is not ours.
        """
        receiver = _Receiver(self)
        clock = Clock()
        notifier = self.notifier(
            {
                "NOTIFY_SOCKET": receiver.address,
                "WATCHDOG_USEC": "2000000",
                "WATCHDOG_PID": str(os.getpid() + 1),
            },
            clock,
        )
        notifier.startWatchdog()
        clock.advance(5)
        self.assertEqual(receiver.messages(), [])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_badWatchdogUsec(self):
        """
        A WATCHDOG_USEC that is not a positive number means no watchdog.
        """
        receiver = _Receiver(self)
        for value in ("soon", "0", "-5"):
            clock = Clock()
            notifier = self.notifier(
                {"NOTIFY_SOCKET": receiver.address, "WATCHDOG_USEC": value}, clock
            )
            notifier.startWatchdog()
            self.assertEqual(clock.getDelayedCalls(), [], value)

    def test_environmentKeptByDefault(self):
        """
        NOTIFY_SOCKET and the watchdog variables stay in the environment
        unless unsetEnvironment=True (sd_notify's unset_environment).
        """
        environ = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "1", "WATCHDOG_PID": "1", "OTHER": "y"}
        Notifier.fromEnvironment(environ)
        self.assertEqual(len(environ), 4)
        notifier = Notifier.fromEnvironment(environ, unsetEnvironment=True)
        self.assertEqual(environ, {"OTHER": "y"})
        self.assertEqual(notifier.address, "/run/x")
