"""
Tests for L{proxyd.accesslog}.
"""

import io
import json
import os

from twisted.logger import globalLogPublisher
from twisted.internet.testing import EventLoggingObserver
from twisted.trial.unittest import SynchronousTestCase

from proxyd.accesslog import AccessLog

# 2026-11-23T21:40:00Z
NOW = 1795470000.0

RECORD = {
    "client": "127.0.0.1",
    "method": "GET",
    "target": "http://h/p",
    "status": 200,
    "bytesIn": 120,
    "bytesOut": 3456,
    "duration": 0.0123,
    "upstream": "127.0.0.1:8000",
}


def _now():
    return NOW


class _BrokenStream:
    def __init__(self):
        self.attempts = 0

    def write(self, data):
        self.attempts += 1
        raise OSError(28, "No space left on device")

    def close(self):
        pass


class FormatTests(SynchronousTestCase):
    def test_text(self):
        """The text line has time, client, request, status, sizes, duration
        and upstream."""
        stream = io.StringIO()
        AccessLog(stream, "text", now=_now).write(RECORD)
        self.assertEqual(
            stream.getvalue(),
            '2026-11-23T21:40:00Z 127.0.0.1 "GET http://h/p" 200 in=120 out=3456 '
            "dur=0.012 upstream=127.0.0.1:8000\n",
        )

    def test_json(self):
        """JSON is one object per line with the same fields."""
        stream = io.StringIO()
        log = AccessLog(stream, "json", now=_now)
        log.write(RECORD)
        log.write(dict(RECORD, method="CONNECT", target="example.com:443", upstream=None))
        lines = stream.getvalue().splitlines()
        self.assertEqual(len(lines), 2)
        self.assertEqual(
            json.loads(lines[0]),
            dict(RECORD, duration=0.0123, time="2026-11-23T21:40:00Z"),
        )
        second = json.loads(lines[1])
        self.assertEqual((second["method"], second["upstream"]), ("CONNECT", None))

    def test_missingAndBytes(self):
        """Missing values are -, and bytes are accepted."""
        stream = io.StringIO()
        AccessLog(stream, "text", now=_now).write(
            {"client": "::1", "method": b"CONNECT", "target": b"h:443"}
        )
        self.assertEqual(
            stream.getvalue(),
            '2026-11-23T21:40:00Z ::1 "CONNECT h:443" - in=- out=- dur=- upstream=-\n',
        )

    def test_textEscapesClientInput(self):
        """Quotes, spaces, newlines and non-ASCII from the client cannot
        forge or break lines."""
        stream = io.StringIO()
        AccessLog(stream, "text", now=_now).write(
            dict(RECORD, method='G"T', target=b'http://h/a b\r\n"x\xff', upstream=None)
        )
        line = stream.getvalue()
        self.assertEqual(line.count("\n"), 1)
        self.assertIn(r'"G\"T http://h/a\x20b\x0d\x0a\"x\xff"', line)
        self.assertTrue(line.isascii())

    def test_jsonEscapes(self):
        """JSON lines stay one line whatever the target holds."""
        stream = io.StringIO()
        AccessLog(stream, "json", now=_now).write(dict(RECORD, target="a\nb\u2028"))
        self.assertEqual(stream.getvalue().count("\n"), 1)
        self.assertEqual(json.loads(stream.getvalue())["target"], "a\nb\u2028")

    def test_unknownFormat(self):
        """Only text and json."""
        self.assertRaises(ValueError, AccessLog, io.StringIO(), "xml")


class FileTests(SynchronousTestCase):
    def test_appendsLineBuffered(self):
        """Lines reach the file as they are written, appended to what was there."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("old\n")
        log = AccessLog.open(path, "text", now=_now)
        self.addCleanup(log.close)
        log.write(RECORD)
        with open(path) as f:
            self.assertEqual(f.read().splitlines()[0], "old")
        with open(path) as f:
            self.assertEqual(len(f.read().splitlines()), 2)

    def test_reopenAfterRename(self):
        """After logrotate renames the file, reopen starts a new one at the path."""
        path = self.mktemp()
        log = AccessLog.open(path, "text", now=_now)
        self.addCleanup(log.close)
        log.write(RECORD)
        os.rename(path, path + ".1")
        log.write(RECORD)
        log.reopen()
        log.write(RECORD)
        with open(path + ".1") as f:
            self.assertEqual(len(f.read().splitlines()), 2)
        with open(path) as f:
            self.assertEqual(len(f.read().splitlines()), 1)

    def test_reopenFailureKeepsOldFile(self):
        """If the path cannot be opened again, writing goes on to the old file."""
        path = self.mktemp()
        log = AccessLog.open(path, "text", now=_now)
        self.addCleanup(log.close)
        os.rename(path, path + ".1")
        os.mkdir(path)  # now unopenable as a file, even for root
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        log.reopen()
        log.write(RECORD)
        with open(path + ".1") as f:
            self.assertEqual(len(f.read().splitlines()), 1)
        self.assertEqual(len(observer), 1)
        self.assertIn("Cannot reopen", observer[0]["log_format"])

    def test_stdout(self):
        """- writes to the process's real standard output, not sys.stdout."""
        log = AccessLog.open("-", "text")
        self.addCleanup(log.close)
        self.assertEqual(log._stream.fileno(), 1)
        log.reopen()  # nothing to reopen; must not close fd 1
        self.assertFalse(log._stream.closed)

    def test_writeErrorLoggedOnce(self):
        """A failing write is logged once, never raised into the caller."""
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        stream = _BrokenStream()
        log = AccessLog(stream, "text", path="/var/log/x", now=_now)
        log.write(RECORD)
        log.write(RECORD)
        self.assertEqual(stream.attempts, 2)
        self.assertEqual(len(observer), 1)
        self.assertIn("No space left", observer[0]["error"])

    def test_writeAfterClose(self):
        """Writing after close (a request finishing during shutdown) is harmless."""
        path = self.mktemp()
        log = AccessLog.open(path, "text", now=_now)
        log.close()
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        log.write(RECORD)
        self.assertEqual(len(observer), 1)
