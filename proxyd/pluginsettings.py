# -*- test-case-name: tests.unit.test_pluginsettings -*-
"""
Helpers for reading a plugin's C{key=value} settings and for the host and
URL globs most plugins filter by.  Every reader raises
L{PluginSettingsError} naming the key, so start-up can refuse bad settings
in one line.
"""

import fnmatch
import re

from proxyd.interfaces import PluginSettingsError

_SIZE = re.compile(r"^\s*(\d+)\s*(b|k|kb|kib|m|mb|mib|g|gb|gib)?\s*$", re.IGNORECASE)
_UNITS = {None: 1, "b": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": 1024**2, "mb": 1024**2, "mib": 1024**2,
          "g": 1024**3, "gb": 1024**3, "gib": 1024**3}


def parseSize(text):
    """
    C{"65536"}, C{"64k"}, C{"10MiB"}, C{"1g"} to a number of bytes (units
    are powers of 1024).

    @raise ValueError: anything else.
    """
    match = _SIZE.match(str(text))
    if not match:
        raise ValueError("expected a size like 65536, 64k or 10MiB, got {!r}".format(text))
    number, unit = match.groups()
    return int(number) * _UNITS[unit.lower() if unit else None]


def checkKeys(settings, allowed, required=()):
    """
    Refuse keys that are not in C{allowed} and missing C{required} keys.
    """
    for key in settings:
        if key not in allowed:
            raise PluginSettingsError(
                "{}: unknown setting (expected {})".format(key, ", ".join(sorted(allowed)))
            )
    for key in required:
        if key not in settings or not settings[key]:
            raise PluginSettingsError("{}: required".format(key))


def choice(settings, key, choices, default):
    value = settings.get(key, default)
    if value not in choices:
        raise PluginSettingsError("{}: expected {}, got {!r}".format(key, " or ".join(choices), value))
    return value


def integer(settings, key, default, low=None, high=None):
    if key not in settings:
        return default
    value = settings[key]
    try:
        number = int(value)
    except ValueError:
        raise PluginSettingsError("{}: expected a whole number, got {!r}".format(key, value))
    if (low is not None and number < low) or (high is not None and number > high):
        raise PluginSettingsError("{}: must be between {} and {}, got {}".format(key, low, high, number))
    return number


def size(settings, key, default):
    if key not in settings:
        return default
    try:
        return parseSize(settings[key])
    except ValueError as e:
        raise PluginSettingsError("{}: {}".format(key, e))


def boolean(settings, key, default):
    if key not in settings:
        return default
    value = settings[key].lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise PluginSettingsError("{}: expected true or false, got {!r}".format(key, settings[key]))


def regex(settings, key, flags=0):
    """A compiled C{str} regular expression."""
    value = settings.get(key, "")
    try:
        return re.compile(value, flags)
    except re.error as e:
        raise PluginSettingsError("{}: bad regular expression {!r}: {}".format(key, value, e))


def hostGlobs(settings, key):
    """
    C{"example.com|*.example.org"}: host globs separated by C{|}, lower
    case, matched with L{matchesHost}.  An absent key gives C{()}.
    """
    patterns = []
    for pattern in _split(settings.get(key, "")):
        pattern = pattern.lower().rstrip(".")
        if "," in pattern:
            raise PluginSettingsError("{}: separate host globs with |, not a comma ({!r})".format(key, pattern))
        if any(c in pattern for c in "/ :@"):
            raise PluginSettingsError("{}: {!r} is not a host glob like *.example.com".format(key, pattern))
        patterns.append(pattern)
    return tuple(patterns)


def urlGlobs(settings, key):
    """
    C{"http://example.com/ads/*|*://*/tracker.js"}: URL globs separated
    by C{|}, matched with L{matchesURL}.  An absent key gives C{()}.
    """
    patterns = []
    for pattern in _split(settings.get(key, "")):
        if "://" not in pattern:
            raise PluginSettingsError(
                "{}: {!r} is not a URL glob like http://example.com/ads/* or *://*/ads/*".format(key, pattern)
            )
        patterns.append(pattern)
    return tuple(patterns)


def _split(value):
    return [part.strip() for part in value.split("|") if part.strip()]


def matchesHost(patterns, host):
    """Whether C{host} (any case, trailing dot or not) matches one of the globs."""
    host = host.lower().rstrip(".")
    for pattern in patterns:
        if fnmatch.fnmatchcase(host, pattern):
            return True
    return False


def matchesURL(patterns, url):
    """
    Whether C{url} (C{bytes} or C{str}) matches one of the globs; the
    scheme and host are compared without regard to case.
    """
    if isinstance(url, bytes):
        url = url.decode("latin-1")
    scheme, sep, rest = url.partition("://")
    authorityEnd = len(rest)
    for stop in "/?#":
        i = rest.find(stop)
        if 0 <= i < authorityEnd:
            authorityEnd = i
    url = scheme.lower() + sep + rest[:authorityEnd].lower() + rest[authorityEnd:]
    for pattern in patterns:
        if fnmatch.fnmatchcase(url, pattern):
            return True
    return False


def parseSettings(text):
    """
    C{"k=v,k2=v2"} (what follows C{NAME:} in C{--plugin}) to a dict.

    A comma separates settings only when a C{key=} follows it, so values
    may contain commas (C{pattern=a,b} is one setting); a literal
    C{,key=} inside a value is written C{\\,}.

    @raise ValueError: a part without C{=}, an empty key, or a key given twice.
    """
    settings = {}
    if not text:
        return settings
    parts = re.split(r"(?<!\\),(?=\s*[A-Za-z_][\w.-]*=)", text)
    for part in parts:
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError("expected key=value, got {!r}".format(part))
        if key in settings:
            raise ValueError("{} given twice".format(key))
        settings[key] = value.replace("\\,", ",")
    return settings
