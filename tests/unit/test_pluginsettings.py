"""
Tests for L{proxyd.pluginsettings}: the readers plugins use for their
C{key=value} settings, and host and URL globs.
"""

import re

from twisted.trial.unittest import SynchronousTestCase

from proxyd.interfaces import PluginSettingsError
from proxyd.pluginsettings import (
    boolean,
    checkKeys,
    choice,
    hostGlobs,
    integer,
    matchesHost,
    matchesURL,
    parseSettings,
    parseSize,
    regex,
    size,
    urlGlobs,
)


class ParseSizeTests(SynchronousTestCase):
    def test_plainNumber(self):
        """A number without a unit is bytes."""
        self.assertEqual(parseSize("65536"), 65536)
        self.assertEqual(parseSize("0"), 0)
        self.assertEqual(parseSize(12), 12)

    def test_units(self):
        """k, m and g in their spellings are powers of 1024, in any case."""
        cases = {
            "10b": 10,
            "64k": 65536,
            "64K": 65536,
            "64kb": 65536,
            "64KiB": 65536,
            "2m": 2 * 1024**2,
            "10MiB": 10 * 1024**2,
            "3MB": 3 * 1024**2,
            "1g": 1024**3,
            "1GiB": 1024**3,
            "1gb": 1024**3,
        }
        for text, expected in cases.items():
            self.assertEqual(parseSize(text), expected, text)

    def test_spaces(self):
        """Spaces around the number and before the unit are allowed."""
        self.assertEqual(parseSize(" 2 kb "), 2048)

    def test_badValues(self):
        """Fractions, negatives, unknown units and empty text are refused with an example."""
        for text in ["", "k", "1.5k", "-1", "10TB", "ten", "1 k b", "0x10"]:
            e = self.assertRaises(ValueError, parseSize, text)
            self.assertIn("64k", str(e))
            self.assertIn(repr(text), str(e))

    def test_sizeNamesKey(self):
        """size() gives the default when absent and names the key when bad."""
        self.assertEqual(size({}, "max", 7), 7)
        self.assertEqual(size({"max": "1k"}, "max", 7), 1024)
        e = self.assertRaises(PluginSettingsError, size, {"max": "lots"}, "max", 7)
        self.assertTrue(str(e).startswith("max: "), str(e))


class CheckKeysTests(SynchronousTestCase):
    def test_allowedKeys(self):
        """Known keys pass."""
        checkKeys({"a": "1", "b": "2"}, {"a", "b", "c"})

    def test_unknownKey(self):
        """An unknown key is refused, naming it and listing the allowed ones."""
        e = self.assertRaises(PluginSettingsError, checkKeys, {"colour": "red"}, {"size", "color"})
        self.assertEqual(str(e), "colour: unknown setting (expected color, size)")

    def test_requiredMissing(self):
        """A required key that is missing or empty is refused, named."""
        e = self.assertRaises(PluginSettingsError, checkKeys, {}, {"file"}, required=("file",))
        self.assertEqual(str(e), "file: required")
        e = self.assertRaises(PluginSettingsError, checkKeys, {"file": ""}, {"file"}, required=("file",))
        self.assertEqual(str(e), "file: required")

    def test_isValueError(self):
        """PluginSettingsError is a ValueError."""
        self.assertTrue(issubclass(PluginSettingsError, ValueError))


class ReaderTests(SynchronousTestCase):
    def test_integerDefault(self):
        """integer() gives the default when the key is absent."""
        self.assertEqual(integer({}, "n", 5, 1, 10), 5)

    def test_integerInBounds(self):
        """A value at either bound is accepted."""
        self.assertEqual(integer({"n": "1"}, "n", 5, 1, 10), 1)
        self.assertEqual(integer({"n": "10"}, "n", 5, 1, 10), 10)

    def test_integerOutOfBounds(self):
        """A value outside the bounds is refused, naming the key and the bounds."""
        e = self.assertRaises(PluginSettingsError, integer, {"n": "11"}, "n", 5, 1, 10)
        self.assertEqual(str(e), "n: must be between 1 and 10, got 11")
        e = self.assertRaises(PluginSettingsError, integer, {"n": "0"}, "n", 5, 1, 10)
        self.assertEqual(str(e), "n: must be between 1 and 10, got 0")

    def test_integerOneBound(self):
        """With only a low bound, large values pass and small ones are refused."""
        self.assertEqual(integer({"n": "999999"}, "n", 5, low=1), 999999)
        e = self.assertRaises(PluginSettingsError, integer, {"n": "0"}, "n", 5, low=1)
        self.assertTrue(str(e).startswith("n: "), str(e))

    def test_integerNotANumber(self):
        """A value that is not a whole number is refused, naming the key."""
        for value in ["x", "1.5", ""]:
            e = self.assertRaises(PluginSettingsError, integer, {"n": value}, "n", 5)
            self.assertEqual(str(e), "n: expected a whole number, got {!r}".format(value))

    def test_booleanSpellings(self):
        """true/false, yes/no, on/off and 1/0 in any case are booleans."""
        for value in ["1", "true", "TRUE", "yes", "On"]:
            self.assertIs(boolean({"b": value}, "b", False), True, value)
        for value in ["0", "false", "No", "OFF"]:
            self.assertIs(boolean({"b": value}, "b", True), False, value)

    def test_booleanDefault(self):
        """boolean() gives the default when the key is absent."""
        self.assertIs(boolean({}, "b", True), True)

    def test_booleanBad(self):
        """Anything else is refused, naming the key and the value."""
        e = self.assertRaises(PluginSettingsError, boolean, {"b": "maybe"}, "b", True)
        self.assertEqual(str(e), "b: expected true or false, got 'maybe'")

    def test_choice(self):
        """choice() accepts one of the choices, gives the default, refuses others naming the key."""
        self.assertEqual(choice({"m": "b"}, "m", ("a", "b"), "a"), "b")
        self.assertEqual(choice({}, "m", ("a", "b"), "a"), "a")
        e = self.assertRaises(PluginSettingsError, choice, {"m": "c"}, "m", ("a", "b"), "a")
        self.assertEqual(str(e), "m: expected a or b, got 'c'")

    def test_regex(self):
        """regex() compiles the value with the flags given."""
        pattern = regex({"p": "ab+"}, "p", re.IGNORECASE)
        self.assertTrue(pattern.search("xABBy"))

    def test_regexErrorNamesKey(self):
        """A bad regular expression is refused, naming the key and the pattern."""
        e = self.assertRaises(PluginSettingsError, regex, {"pattern": "a("}, "pattern")
        self.assertTrue(str(e).startswith("pattern: bad regular expression 'a(': "), str(e))


class GlobTests(SynchronousTestCase):
    def test_hostGlobsSplitAndLowercase(self):
        """Host globs are split on |, stripped, lower-cased, without a trailing dot."""
        self.assertEqual(
            hostGlobs({"hosts": " Example.COM. | *.Ads.Test ||"}, "hosts"), ("example.com", "*.ads.test")
        )

    def test_hostGlobsAbsent(self):
        """An absent key gives no globs."""
        self.assertEqual(hostGlobs({}, "hosts"), ())

    def test_hostGlobsRefuseURLParts(self):
        """A host glob with '/', ':' or '@' is refused, naming the key."""
        for value in ["example.com/ads", "example.com:80", "http://example.com", "u@example.com"]:
            e = self.assertRaises(PluginSettingsError, hostGlobs, {"hosts": value}, "hosts")
            self.assertTrue(str(e).startswith("hosts: "), str(e))
            self.assertIn("is not a host glob", str(e))

    def test_hostGlobsRefuseCommas(self):
        """Globs separated by commas instead of | are refused, naming the key."""
        e = self.assertRaises(PluginSettingsError, hostGlobs, {"hosts": "a.test,b.test"}, "hosts")
        self.assertTrue(str(e).startswith("hosts: separate host globs with |"), str(e))

    def test_urlGlobs(self):
        """URL globs are split on | and kept as written."""
        self.assertEqual(
            urlGlobs({"urls": "http://a.test/Ads/*|*://*/t.js"}, "urls"), ("http://a.test/Ads/*", "*://*/t.js")
        )
        self.assertEqual(urlGlobs({}, "urls"), ())

    def test_urlGlobsRequireScheme(self):
        """A URL glob without '://' is refused, naming the key."""
        e = self.assertRaises(PluginSettingsError, urlGlobs, {"urls": "http://a.test/*|a.test/ads/*"}, "urls")
        self.assertTrue(str(e).startswith("urls: 'a.test/ads/*' is not a URL glob"), str(e))

    def test_matchesHostExact(self):
        """A plain host glob matches that host in any case, with or without a trailing dot."""
        patterns = hostGlobs({"h": "example.com"}, "h")
        self.assertTrue(matchesHost(patterns, "example.com"))
        self.assertTrue(matchesHost(patterns, "EXAMPLE.com"))
        self.assertTrue(matchesHost(patterns, "example.com."))
        self.assertFalse(matchesHost(patterns, "www.example.com"))
        self.assertFalse(matchesHost(patterns, "example.com.evil.test"))

    def test_matchesHostWildcard(self):
        """'*.example.com' matches subdomains but not the domain itself."""
        patterns = hostGlobs({"h": "*.example.com"}, "h")
        self.assertTrue(matchesHost(patterns, "a.example.com"))
        self.assertTrue(matchesHost(patterns, "A.B.Example.COM."))
        self.assertFalse(matchesHost(patterns, "example.com"))
        self.assertFalse(matchesHost(patterns, "badexample.com"))

    def test_matchesHostNone(self):
        """No globs match nothing."""
        self.assertFalse(matchesHost((), "example.com"))

    def test_matchesURLSchemeAndHostAnyCase(self):
        """Scheme and host are compared without case, for str and bytes URLs."""
        patterns = urlGlobs({"u": "http://example.com/ads/*"}, "u")
        self.assertTrue(matchesURL(patterns, "HTTP://Example.COM/ads/x.gif"))
        self.assertTrue(matchesURL(patterns, b"http://EXAMPLE.com/ads/x.gif"))
        self.assertFalse(matchesURL(patterns, "https://example.com/ads/x.gif"))

    def test_matchesURLPathCaseSensitive(self):
        """The path keeps its case."""
        patterns = urlGlobs({"u": "http://example.com/ads/*"}, "u")
        self.assertFalse(matchesURL(patterns, "http://example.com/ADS/x.gif"))
        self.assertFalse(matchesURL(patterns, b"http://example.com/Ads/x.gif"))

    def test_matchesURLQueryNotLowered(self):
        """A query straight after the host is not lower-cased with the host."""
        patterns = ("http://example.com?Q=*",)
        self.assertTrue(matchesURL(patterns, "http://EXAMPLE.com?Q=1"))
        self.assertFalse(matchesURL(patterns, "http://example.com?q=1"))

    def test_matchesURLWildcards(self):
        """'*://*/tracker.js' matches any scheme and host with that path."""
        patterns = urlGlobs({"u": "*://*/tracker.js"}, "u")
        self.assertTrue(matchesURL(patterns, b"https://cdn.test/tracker.js"))
        self.assertTrue(matchesURL(patterns, "http://a.test:8080/tracker.js"))
        self.assertFalse(matchesURL(patterns, "http://a.test/tracker.json"))

    def test_matchesURLNonASCIIBytes(self):
        """A bytes URL with bytes outside ASCII is matched, not refused."""
        self.assertTrue(matchesURL(("http://a.test/*",), b"http://a.test/caf\xc3\xa9"))


class ParseSettingsTests(SynchronousTestCase):
    def test_empty(self):
        """No text gives no settings."""
        self.assertEqual(parseSettings(""), {})

    def test_pairs(self):
        """Comma-separated key=value pairs, values kept as written after '='."""
        self.assertEqual(parseSettings("a=1,b=x y,c="), {"a": "1", "b": "x y", "c": ""})

    def test_commaInValue(self):
        """A comma not followed by key= stays in the value."""
        self.assertEqual(
            parseSettings("pattern=a,b,replacement=c"), {"pattern": "a,b", "replacement": "c"}
        )

    def test_escapedComma(self):
        """A backslash-comma is a literal comma even before something like key=."""
        self.assertEqual(
            parseSettings("pattern=a\\,x=1,replacement=c"), {"pattern": "a,x=1", "replacement": "c"}
        )

    def test_equalsInValue(self):
        """Only the first '=' separates key and value."""
        self.assertEqual(parseSettings("q=a=b"), {"q": "a=b"})

    def test_duplicateKey(self):
        """A key given twice is refused."""
        e = self.assertRaises(ValueError, parseSettings, "a=1,a=2")
        self.assertEqual(str(e), "a given twice")

    def test_noEquals(self):
        """A part without '=' or with an empty key is refused."""
        self.assertRaises(ValueError, parseSettings, "novalue")
        self.assertRaises(ValueError, parseSettings, "=v")
