# -*- test-case-name: tests.unit.test_plugin_har -*-
"""
The HAR 1.2 format, as browser developer tools import it: L{makeEntry}
turns what was seen of one flow into an entry (request, response, content,
timings, cookies, query string, postData, and whether a body is recorded
as text, base64 or decoded from gzip), and L{HarFile} writes a log that is
valid JSON after every entry.

Why apart from the C{har} plugin (C{plugins/har.py}): the plugin decides
what to record and when, and holds the file open as a service; this is
what the file says, which needs no plugin machinery, so the format can be
read and changed in one place without the hooks around it.
"""

import codecs
import json
import os
from base64 import b64encode
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from urllib.parse import parse_qsl, urlsplit

from proxyd import __version__
from proxyd.coding import DecodeError, contentType, decodeContent

HEAD = (
    '{"log": {"version": "1.2", "creator": {"name": "proxyd", "version": '
    + json.dumps(__version__)
    + '}, "pages": [], "entries": ['
).encode("ascii")
TAIL = b"\n]}}\n"


class HarWriteError(Exception):
    """An entry could not be written; C{str()} is the underlying error's."""


class HarFile:
    """
    A HAR log on disk, valid JSON after every entry: each entry is written
    over the closing brackets, which are written again after it.

    @ivar stream: the open file, or None before L{open} and after L{close}.
    """

    def __init__(self, path):
        self.path = path
        self.stream = None
        self._end = 0
        self._entries = 0

    def open(self):
        """
        Create the file, or start it afresh, as a log with no entries.

        @return: whether a non-empty file was there and has been replaced.
        @raise OSError: it cannot be written.
        """
        try:
            existed = os.path.getsize(self.path) > 0
        except OSError:
            existed = False
        self.stream = open(self.path, "wb")
        self.stream.write(HEAD + TAIL)
        self.stream.flush()
        self._end = len(HEAD)
        self._entries = 0
        return existed

    def add(self, entry):
        """
        Write C{entry} (a L{makeEntry} dict) after the entries so far.

        @raise HarWriteError: the write failed; the file is left ending as
            it did, as far as the stream allows.
        """
        data = (b",\n" if self._entries else b"\n") + json.dumps(entry, ensure_ascii=False).encode(
            "utf-8", "backslashreplace"
        )
        stream = self.stream
        try:
            stream.seek(self._end)
            stream.write(data + TAIL)
            stream.flush()
        except (OSError, ValueError) as e:
            self._repair(stream)
            raise HarWriteError(e) from e
        self._end += len(data)
        self._entries += 1

    def _repair(self, stream):
        try:
            stream.seek(self._end)
            stream.write(TAIL)
            stream.truncate()
            stream.flush()
        except (OSError, ValueError):
            pass

    def close(self):
        """
        Close the file; its content is already complete.

        @raise OSError: closing failed.
        """
        stream, self.stream = self.stream, None
        if stream is not None:
            stream.close()


class BodyCapture:
    """
    What an entry records of a body: its first C{limit} bytes, and its
    length.  Feed it with L{keep}; set L{ended} when the body is complete.

    @ivar size: the body's length so far.
    @ivar ended: whether the body is complete.
    """

    def __init__(self, limit):
        self.limit = limit
        self._kept = []
        self._keptSize = 0
        self.size = 0
        self.ended = False

    def keep(self, data):
        """Count C{data}, and keep as much of it as the limit leaves room for."""
        self.size += len(data)
        room = self.limit - self._keptSize
        if room > 0 and data:
            piece = bytes(data[:room])
            self._kept.append(piece)
            self._keptSize += len(piece)

    @property
    def data(self):
        """The bytes kept: the whole body unless L{truncated}."""
        return b"".join(self._kept)

    @property
    def truncated(self):
        return self.size > self._keptSize


class FlowRecord:
    """
    What is known of one flow for its entry: clock readings in seconds,
    and the L{BodyCapture} of each body (None until its head is seen).
    """

    __slots__ = ("begun", "requestEnded", "responseBegun", "request", "response")

    def __init__(self, begun):
        self.begun = begun
        self.requestEnded = None
        self.responseBegun = None
        self.request = None
        self.response = None


def makeEntry(flow, record, ended):
    """
    The HAR entry for C{flow}, whose response ended at C{ended} (seconds,
    the clock of C{record}).  C{record.response} must be set.
    """
    responseBegun = record.responseBegun
    requestEnded = record.requestEnded
    if requestEnded is None or requestEnded > responseBegun:
        requestEnded = record.begun
    send = _ms(requestEnded - record.begun)
    wait = _ms(responseBegun - requestEnded)
    receive = _ms(ended - responseBegun)
    return {
        "startedDateTime": _isoTime(datetime.fromtimestamp(flow.started, timezone.utc)),
        "time": round(send + wait + receive, 3),
        "request": _request(flow.request, record.request),
        "response": _response(flow.response, record.response),
        "cache": {},
        "timings": {
            "blocked": -1,
            "dns": -1,
            "connect": -1,
            "ssl": -1,
            "send": send,
            "wait": wait,
            "receive": receive,
        },
        "_proxyd": {"flow": flow.id, "client": flow.client, "mode": flow.mode},
    }


def _request(request, capture):
    har = {
        "method": request.method.decode("latin-1"),
        "url": request.url.decode("latin-1"),
        "httpVersion": "HTTP/" + request.version.decode("latin-1"),
        "cookies": _requestCookies(request.headers),
        "headers": _headers(request.headers),
        "queryString": _pairs(urlsplit(request.url).query),
        "headersSize": -1,
        "bodySize": capture.size if capture is not None and capture.ended else -1,
    }
    if capture is not None and capture.size:
        mediaType, charset = contentType(request)
        form = mediaType == "application/x-www-form-urlencoded"
        # HAR 1.2 calls params and text exclusive, yet lists both without
        # "optional"; browsers write both, and some readers insist on them.
        postData = {
            "mimeType": _header(request, b"content-type"),
            "params": _pairs(capture.data) if form and not capture.truncated else [],
        }
        _bodyText(postData, capture, charset, capture.data, base64Field="_encoding")
        postData.setdefault("text", "")
        har["postData"] = postData
    return har


def _response(response, capture):
    _, charset = contentType(response)
    content = {"size": capture.size, "mimeType": _header(response, b"content-type")}
    data = capture.data
    coding = _header(response, b"content-encoding").strip().lower()
    if coding and coding != "identity" and capture.size:
        decoded = _decoded(coding, data, capture.limit) if not capture.truncated else None
        if decoded is None:
            content["comment"] = "body is {}-coded as sent".format(coding)
        else:
            data = decoded
            content["size"] = len(decoded)
            content["compression"] = len(decoded) - capture.size
    _bodyText(content, capture, charset, data, base64Field="encoding")
    return {
        "status": response.status,
        "statusText": response.reason.decode("latin-1"),
        "httpVersion": "HTTP/1.1",
        "cookies": _responseCookies(response.headers),
        "headers": _headers(response.headers),
        "content": content,
        "redirectURL": _header(response, b"location"),
        "headersSize": -1,
        "bodySize": capture.size,
    }


def _bodyText(har, capture, charset, data, base64Field):
    """
    Set C{har["text"]}: the body as text if it reads as text in its
    C{charset} (UTF-8 if None), else base64 with C{har[base64Field]}
    saying so; and a comment when it was cut short or not recorded.
    """
    if not capture.size:
        return
    comments = [har["comment"]] if "comment" in har else []
    if capture.truncated:
        if data:
            comments.append("truncated: first {} of {} bytes recorded".format(len(capture.data), capture.size))
        else:
            comments.append("body of {} bytes not recorded".format(capture.size))
    if data:
        text = _asText(data, charset or "utf-8", final=not capture.truncated)
        if text is None:
            har["text"] = b64encode(data).decode("ascii")
            har[base64Field] = "base64"
            if base64Field.startswith("_"):
                comments.append("binary body: text is base64")
        else:
            har["text"] = text
    if comments:
        har["comment"] = "; ".join(comments)


def _asText(data, charset, final):
    """
    C{data} decoded, or None if it is not text.  Unless C{final}, an
    incomplete character at the end (a cut body) is left out.
    """
    try:
        codec = codecs.lookup(charset)
    except LookupError:
        codec = None
    if codec is None or not getattr(codec, "_is_text_encoding", True):
        codec = codecs.lookup("utf-8")
    try:
        text = codec.incrementaldecoder().decode(data, final)
    except (ValueError, TypeError):
        return None
    if "\x00" in text:
        return None
    return text


def _decoded(coding, data, limit):
    """
    A gzip or deflate body decoded, or None: another coding, bad data, or
    more than C{limit} bytes once decoded.
    """
    try:
        decoded, _ = decodeContent(coding, data, limit)
    except DecodeError:
        return None
    return decoded


def _ms(seconds):
    return round(max(seconds, 0.0) * 1000.0, 3)


def _isoTime(stamp):
    """A UTC C{datetime} as HAR writes times: C{2026-11-23T21:40:00.250Z}."""
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + "{:03d}Z".format(stamp.microsecond // 1000)


def _header(message, name):
    """The last value of header C{name} as text, or ''."""
    return message.header(name, b"").decode("latin-1")


def _headers(headers):
    return [
        {"name": name.decode("latin-1"), "value": value.decode("latin-1")}
        for name, values in headers.getAllRawHeaders()
        for value in values
    ]


def _pairs(query):
    """C{a=1&b=%20} (bytes) to HAR name/value pairs, percent-decoded."""
    text = query.decode("utf-8", "replace")
    return [
        {"name": name, "value": value}
        for name, value in parse_qsl(text, keep_blank_values=True, encoding="utf-8", errors="replace")
    ]


def _cookie(pair):
    """C{name=value} to a HAR cookie, or None if it is not one."""
    name, sep, value = pair.strip().partition("=")
    return {"name": name, "value": value} if sep and name else None


def _requestCookies(headers):
    cookies = []
    for line in headers.getRawHeaders(b"cookie", []):
        cookies.extend(filter(None, map(_cookie, line.decode("latin-1").split(";"))))
    return cookies


def _responseCookies(headers):
    cookies = []
    for line in headers.getRawHeaders(b"set-cookie", []):
        parts = line.decode("latin-1").split(";")
        cookie = _cookie(parts[0])
        if cookie is None:
            continue
        for attribute in parts[1:]:
            key, _, value = attribute.strip().partition("=")
            key = key.strip().lower()
            value = value.strip()
            if key in ("path", "domain"):
                cookie[key] = value
            elif key == "expires":
                expires = _httpDate(value)
                if expires is not None:
                    cookie["expires"] = expires
            elif key == "httponly":
                cookie["httpOnly"] = True
            elif key == "secure":
                cookie["secure"] = True
        cookies.append(cookie)
    return cookies


def _httpDate(text):
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return _isoTime(when.astimezone(timezone.utc))
