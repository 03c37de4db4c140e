# -*- test-case-name: tests.unit.test_accesslog -*-
"""
The --access-log: one line per request or tunnel, as text or JSON.

Kept apart from twisted.logger on purpose: access lines go to their own
file (or to the real standard output, which twistd has redirected into its
own log), and a full disk must never break a request.
"""

import json
import os
import sys
import time

from twisted.logger import Logger

FIELDS = (
    "client",
    "method",
    "target",
    "status",
    "bytesIn",
    "bytesOut",
    "duration",
    "upstream",
)


class AccessLog:
    """
    Writes access records; see L{write} for their keys.
    """

    _log = Logger()

    def __init__(self, stream, fmt="text", path=None, now=time.time):
        """
        @param stream: a text file, line-buffered.
        @param path: where C{stream} came from, for L{reopen}; L{None} for
            standard output.
        @param now: clock for the timestamp.
        """
        if fmt not in ("text", "json"):
            raise ValueError(f"unknown access log format {fmt!r}")
        self._stream = stream
        self._format = fmt
        self._path = path
        self._now = now
        self._failing = False

    @classmethod
    def open(cls, path, fmt="text", now=time.time):
        """
        @param path: a file to append to, or C{"-"} for standard output.
        @raise OSError: the file cannot be opened.
        """
        if path == "-":
            # fd 1, not sys.stdout: twistd turns sys.stdout into log events.
            stream = open(sys.__stdout__.fileno(), "w", buffering=1, closefd=False)
            return cls(stream, fmt, None, now)
        return cls(_openAppend(path), fmt, path, now)

    def write(self, record):
        """
        @param record: C{client}, C{method}, C{target}, C{status},
            C{bytesIn}, C{bytesOut}, C{duration} (seconds), C{upstream}
            (C{"host:port"} or L{None}); missing keys are logged as C{-}.
        """
        line = self.format(record) + "\n"
        try:
            self._stream.write(line)
        except (OSError, ValueError) as e:
            if not self._failing:
                self._failing = True
                self._log.error(
                    "Cannot write the access log {path}: {error}",
                    path=self._path or "-",
                    error=str(e),
                )
        else:
            self._failing = False

    def format(self, record):
        """
        One line for C{record}, without the newline.
        """
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self._now()))
        values = {name: _text(record.get(name)) for name in FIELDS}
        duration = record.get("duration")
        if self._format == "json":
            values["status"] = record.get("status")
            values["bytesIn"] = record.get("bytesIn")
            values["bytesOut"] = record.get("bytesOut")
            values["duration"] = None if duration is None else round(duration, 6)
            values["time"] = stamp
            return json.dumps(values, separators=(",", ":"))
        dur = "-" if duration is None else f"{duration:.3f}"
        fields = {k: _escape(v) for k, v in values.items()}
        return (
            f'{stamp} {fields["client"]} "{fields["method"]} {fields["target"]}" '
            f'{fields["status"]} in={fields["bytesIn"]} out={fields["bytesOut"]} '
            f"dur={dur} upstream={fields['upstream']}"
        )

    def reopen(self):
        """
        Start a new file at the same path (after logrotate moved the old
        one).  If the new one cannot be opened (after C{--uid}, the run
        user may not create files where root opened the log), say so in
        one line and keep writing the old one: no line is lost.

        If the path still names the open file, nothing was rotated and
        nothing is done, so a SIGHUP that only reloads certificates needs
        no new permission (a log created by root before the privilege drop
        may not be writable by the run user).
        """
        if self._path is None:
            return
        if _sameFile(self._path, self._stream):
            return
        try:
            stream = _openAppend(self._path)
        except OSError as e:
            from proxyd.privileges import runUser

            self._log.error(
                "Cannot reopen the access log {path} as {user}: {error}; lines go on to the file it had open",
                path=self._path,
                user=runUser(),
                error=e.strerror or str(e),
            )
            return
        old, self._stream = self._stream, stream
        self._failing = False
        _quietClose(old)

    def close(self):
        _quietClose(self._stream)


def _openAppend(path):
    return open(path, "a", buffering=1, encoding="utf-8")


def _sameFile(path, stream):
    """Whether C{path} names the file C{stream} has open."""
    try:
        there = os.stat(path)
        here = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False  # gone, moved, or a stream without a file
    return (there.st_dev, there.st_ino) == (here.st_dev, here.st_ino)


def _quietClose(stream):
    try:
        stream.close()
    except OSError:
        pass


def _text(value):
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return str(value)


def _escape(value):
    """
    Make a client-supplied value safe for one space-separated line: no
    spaces, quotes, control or non-ASCII characters survive unescaped.
    """
    if value is None or value == "":
        return "-"
    out = []
    for c in value:
        if c in '"\\':
            out.append("\\" + c)
        elif " " < c <= "~":
            out.append(c)
        elif ord(c) <= 0xFF:
            out.append(f"\\x{ord(c):02x}")
        else:
            out.append(c.encode("unicode_escape").decode("ascii"))
    return "".join(out)


def describeTarget(work, head, origin):
    """
    What a request or tunnel was for, as the access log and the log lines
    name it: a tunnel's host:port, a request's absolute URL (made absolute
    from the origin of an intercepted tunnel), or "-".
    """
    target = getattr(work, "target", None)  # a Tunnel's host:port
    if target is not None:
        return target
    if head is None:
        return "-"
    url = getattr(work, "publicURL", None)  # reverse mode
    if url is not None:
        return url.decode("latin-1")
    target = head.target.decode("latin-1")
    if origin is not None and target.startswith("/"):
        tlsName, host, port = origin
        scheme, default = ("https", 443) if tlsName else ("http", 80)
        name = tlsName or host
        if ":" in name:
            name = "[" + name + "]"
        authority = name if port == default else "{}:{}".format(name, port)
        return "{}://{}{}".format(scheme, authority, target)
    return target


def outcome(channel, work, status, bytesOut):
    """
    How C{work} (an exchange, a tunnel, or None for proxyd's own answer)
    ended on C{channel}: (status or 0, bytes in, bytes out, seconds), for
    the access log and the metrics alike.
    """
    return (
        status if status is not None else (getattr(work, "status", None) or 0),
        getattr(work, "bytesIn", 0),
        getattr(work, "bytesOut", bytesOut) or bytesOut,
        channel.clock.seconds() - channel.startTime,
    )


def accessRecord(channel, work, status, bytesOut):
    """The access record (see L{AccessLog.write}) for C{work} on C{channel}."""
    head = channel.requestHead
    status, bytesIn, bytesOut, duration = outcome(channel, work, status, bytesOut)
    return {
        "client": channel.client,
        "method": head.method.decode("latin-1") if head is not None else "-",
        "target": describeTarget(work, head, channel.origin),
        "status": status,
        "bytesIn": bytesIn,
        "bytesOut": bytesOut,
        "duration": round(duration, 6),
        "upstream": channel.upstreamAddress,
    }
