# -*- test-case-name: tests.unit.test_plugin_har -*-
"""
C{--plugin har:file=PATH}: record every flow to a HAR 1.2 file, the format
browser developer tools import, so a capture made at the proxy can be
read with the tools people already know.

It only observes: bodies stream through a pass-through L{IBodyFilter} that
keeps a copy of their first C{max-body} bytes, so nothing is buffered,
delayed or reframed.  An entry is written when its response ends.  The file
is valid JSON after every entry (and after a SIGTERM): each entry is
written over the closing brackets, which are written again after it.

This module is the plugin: settings, hooks, and the file's life as a
service.  What an entry and the file contain is L{proxyd.har}'s.
"""

import os
from functools import partial
from itertools import count

from twisted.application.service import IService, Service
from twisted.logger import Logger
from twisted.plugin import IPlugin
from zope.interface import implementer

from proxyd.har import BodyCapture, FlowRecord, HarFile, HarWriteError, makeEntry
from proxyd.interfaces import (
    BodyFilter,
    IBodyFilter,
    IProxyPlugin,
    IRequestRewriter,
    IResponseRewriter,
    PluginSettingsError,
    Rewriter,
)
from proxyd.pluginsettings import checkKeys, hostGlobs, matchesHost, size

DEFAULT_MAX_BODY = 64 * 1024

_noteKeys = count(1)


@implementer(IBodyFilter)
class _Capture(BodyCapture, BodyFilter):
    """
    Passes a body through unchanged, keeping its first C{limit} bytes and
    counting all of them; calls C{onEnd()} once at the end.
    """

    keepsLength = True

    def __init__(self, limit, onEnd):
        BodyCapture.__init__(self, limit)
        self._onEnd = onEnd

    def filterChunk(self, data):
        self.keep(data)
        return data

    def filterEnd(self):
        if not self.ended:
            self.ended = True
            self._onEnd()
        return b""


@implementer(IRequestRewriter, IResponseRewriter, IService)
class HarRecorder(Rewriter, Service):
    """
    The C{har} rewriter, and the service owning the file: it is opened
    (and started afresh) by L{startService} and closed by L{stopService}.
    Entries completing while it is not running are dropped.
    """

    _log = Logger()

    def __init__(self, path, maxBody=DEFAULT_MAX_BODY, hosts=(), clock=None):
        """
        @param path: the HAR file (made absolute, so a later chdir is harmless).
        @param maxBody: bytes of each body recorded; 0 records none.
        @param hosts: host globs (L{hostGlobs}); empty records every host.
        @param clock: has C{seconds()}, for timings; the reactor by default.
        """
        if clock is None:
            from twisted.internet import reactor as clock
        self.path = os.path.abspath(path)
        self.maxBody = maxBody
        self.hosts = tuple(hosts)
        self.clock = clock
        self._harFile = HarFile(self.path)
        self._failing = False
        self._noteKey = "har#{}".format(next(_noteKeys))

    @property
    def _file(self):
        """The open stream, or None while stopped (tests swap in a failing one)."""
        return self._harFile.stream

    @_file.setter
    def _file(self, stream):
        self._harFile.stream = stream

    # The service

    def startService(self):
        Service.startService(self)
        if self._harFile.open():
            self._log.info("HAR file {path} already existed; starting it afresh", path=self.path)
        self._failing = False

    def stopService(self):
        Service.stopService(self)
        try:
            self._harFile.close()
        except OSError as e:
            self._log.error("Cannot close the HAR file {path}: {error}", path=self.path, error=str(e))
        return None

    # The hooks

    def _newRecord(self, flow):
        """A record for a flow to be recorded, or None if the host filter says no."""
        if self.hosts and not matchesHost(self.hosts, flow.request.host):
            return None
        return FlowRecord(self.clock.seconds())

    def requestHead(self, flow):
        record = flow.notes[self._noteKey] = self._newRecord(flow)
        if record is None:
            return None
        record.request = _Capture(self.maxBody, partial(self._requestEnded, record))
        return record.request

    def _requestEnded(self, record):
        record.requestEnded = self.clock.seconds()

    def responseHead(self, flow):
        key = self._noteKey
        if key in flow.notes:
            record = flow.notes[key]
        else:
            # An earlier plugin answered before our requestHead ran.
            record = self._newRecord(flow)
            if record is not None:
                flow.notes[key] = record
        if record is None:
            return None
        record.responseBegun = self.clock.seconds()
        record.response = _Capture(self.maxBody, partial(self._responseEnded, flow, record))
        return record.response

    def _responseEnded(self, flow, record):
        now = self.clock.seconds()
        flow.notes.pop(self._noteKey, None)
        if self._harFile.stream is None:
            return
        try:
            self._harFile.add(makeEntry(flow, record, now))
        except HarWriteError as e:
            if not self._failing:
                self._failing = True
                self._log.error("Cannot write the HAR file {path}: {error}", path=self.path, error=str(e))
        except Exception:
            # Recording must never break the exchange it records.
            self._log.failure(
                "Cannot record {method} {url} to the HAR file {path}",
                method=flow.request.method.decode("latin-1"),
                url=flow.request.url.decode("latin-1"),
                path=self.path,
            )
        else:
            self._failing = False


@implementer(IPlugin, IProxyPlugin)
class HarPlugin:
    name = "har"
    description = "record flows to a HAR 1.2 file (file=PATH, max-body=SIZE, host=GLOB|...)"

    def makeRewriter(self, settings):
        checkKeys(settings, ("file", "max-body", "host"), required=("file",))
        path = _checkWritable(settings["file"])
        maxBody = size(settings, "max-body", DEFAULT_MAX_BODY)
        hosts = hostGlobs(settings, "host")
        from twisted.internet import reactor

        return HarRecorder(path, maxBody, hosts, reactor)


har = HarPlugin()


def _checkWritable(path):
    """The absolute path, if the file can be created or rewritten there."""
    path = os.path.abspath(os.path.expanduser(path))
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        raise PluginSettingsError("file: directory {} does not exist".format(directory))
    if os.path.isdir(path):
        raise PluginSettingsError("file: {} is a directory".format(path))
    if os.path.exists(path):
        if not os.access(path, os.W_OK):
            raise PluginSettingsError("file: {} is not writable".format(path))
    elif not os.access(directory, os.W_OK | os.X_OK):
        raise PluginSettingsError("file: cannot create files in {}".format(directory))
    return path
