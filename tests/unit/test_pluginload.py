"""
Tests for L{proxyd.pluginload} (finding plugins, building the rewriters
C{--plugin} asks for, C{--list-plugins}) and the plugin options of
C{twistd proxyd} in L{proxyd.tap}.

The C{proxyd_plugins} package, its C{__path__} and C{sys.modules} are
shared by the whole process: every test writes its plugin modules under
names of their own and takes them (and its directories) out again.
"""

import importlib
import io
import itertools
import os
import sys
import textwrap
import uuid

from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SynchronousTestCase

from proxyd import tap
from proxyd.interfaces import IRequestRewriter
from proxyd.pluginload import PACKAGE, PluginLoadError, discover, listing, load, parseSpec

BUNDLED = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "plugins")

_counter = itertools.count(1)

PLUGIN = """
from twisted.plugin import IPlugin
from zope.interface import implementer

from proxyd.interfaces import IProxyPlugin, PluginSettingsError, RequestRewriter


class Rewriter(RequestRewriter):
    def __init__(self, settings):
        self.settings = settings


@implementer(IPlugin, IProxyPlugin)
class Plugin:
    name = {name!r}
    description = {description!r}

    def makeRewriter(self, settings):
{body}
        return Rewriter(settings)


plugin = Plugin()
"""


class PluginDirectoryMixin:
    """
    Writes plugin modules into temporary --plugin-path directories, and
    takes them out of the shared package and of C{sys.modules} afterwards.
    """

    def setUp(self):
        self.package = importlib.import_module(PACKAGE)

    def unique(self, prefix):
        """A name no other test uses."""
        return "{}{}_{}".format(prefix, next(_counter), uuid.uuid4().hex[:8])

    def pluginDirectory(self):
        """A new empty --plugin-path directory, removed from the package's path afterwards."""
        path = os.path.abspath(self.mktemp())
        os.makedirs(path)

        def cleanup():
            while path in self.package.__path__:
                self.package.__path__.remove(path)

        self.addCleanup(cleanup)
        return path

    def writeModule(self, directory, source, moduleName=None):
        """
        Write C{source} as a module of its own in C{directory}.

        @return: the module's file path.
        """
        moduleName = moduleName or self.unique("tp_mod")
        filePath = os.path.join(directory, moduleName + ".py")
        with open(filePath, "w") as f:
            f.write(source)
        fullName = PACKAGE + "." + moduleName

        def cleanup():
            sys.modules.pop(fullName, None)
            if hasattr(self.package, moduleName):
                delattr(self.package, moduleName)

        self.addCleanup(cleanup)
        return filePath

    def writePlugin(self, directory, name=None, description="a test plugin", body="pass"):
        """
        Write a one-file plugin whose C{makeRewriter} runs C{body} (indented
        for the method) and returns a request rewriter keeping its settings.

        @return: the plugin's name.
        """
        if name is None:
            name = self.unique("tp")
        source = PLUGIN.format(name=name, description=description, body=textwrap.indent(body, " " * 8))
        self.writeModule(directory, source)
        return name


class DiscoverTests(PluginDirectoryMixin, SynchronousTestCase):
    def test_onePluginFound(self):
        """A one-file plugin in a --plugin-path directory is found, with the file it came from."""
        directory = self.pluginDirectory()
        name = self.writePlugin(directory, description="does things")
        catalogue = discover([directory])
        self.assertIn(name, catalogue.plugins)
        self.assertEqual(catalogue.plugins[name].description, "does things")
        self.assertEqual(os.path.dirname(catalogue.origins[name]), directory)
        self.assertIn(directory, self.package.__path__)

    def test_bundledPluginsFound(self):
        """The bundled plugins are found without any --plugin-path."""
        catalogue = discover()
        for name in ("block", "har", "headers", "redirect", "replace"):
            if os.path.exists(os.path.join(BUNDLED, name + ".py")):
                self.assertIn(name, catalogue.plugins)

    def test_pathAddedOnce(self):
        """Discovering twice with the same path adds it to the package's path once."""
        directory = self.pluginDirectory()
        discover([directory])
        discover([directory])
        self.assertEqual(self.package.__path__.count(directory), 1)

    def test_notADirectory(self):
        """A --plugin-path that is not a directory is refused, naming it."""
        missing = os.path.abspath(self.mktemp())
        e = self.assertRaises(PluginLoadError, discover, [missing])
        self.assertEqual(str(e), "--plugin-path {}: not a directory".format(missing))
        aFile = os.path.abspath(self.mktemp())
        with open(aFile, "w") as f:
            f.write("")
        e = self.assertRaises(PluginLoadError, discover, [aFile])
        self.assertIn(aFile, str(e))
        self.assertNotIn(missing, self.package.__path__)
        self.assertNotIn(aFile, self.package.__path__)

    def test_syntaxError(self):
        """
        A module with a SyntaxError is one line naming the file in broken,
        and the other plugins still load.
        """
        directory = self.pluginDirectory()
        bad = self.writeModule(directory, "def broken(:\n    pass\n")
        name = self.writePlugin(directory)
        catalogue = discover([directory])
        self.assertIn(name, catalogue.plugins)
        [line] = [line for line in catalogue.broken if bad in line]
        self.assertTrue(line.startswith(bad + ": SyntaxError: "), line)
        self.assertIn("(line 1)", line)
        self.assertNotIn("\n", line)

    def test_importError(self):
        """A module raising ImportError at import is its first line in broken, naming the file."""
        directory = self.pluginDirectory()
        bad = self.writeModule(directory, "raise ImportError('needs libfoo\\nsee the docs')\n")
        name = self.writePlugin(directory)
        catalogue = discover([directory])
        self.assertIn(name, catalogue.plugins)
        self.assertIn(bad + ": ImportError: needs libfoo", catalogue.broken)

    def test_otherErrorAtImport(self):
        """Any exception raised at import is reported the same way, with no traceback logged."""
        directory = self.pluginDirectory()
        bad = self.writeModule(directory, "1 / 0\n")
        catalogue = discover([directory])
        self.assertIn(bad + ": ZeroDivisionError: division by zero", catalogue.broken)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_brokenModuleStaysOneLine(self):
        """Discovering again logs no traceback for a broken module and never reports it twice."""
        directory = self.pluginDirectory()
        bad = self.writeModule(directory, "raise ImportError('nope')\n")
        discover([directory])
        catalogue = discover([directory])
        self.assertLessEqual(len([line for line in catalogue.broken if bad in line]), 1)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_clash(self):
        """Two files claiming the same name are a clash naming both files."""
        directory = self.pluginDirectory()
        name = self.unique("tp")
        self.writePlugin(directory, name=name)
        self.writePlugin(directory, name=name)
        catalogue = discover([directory])
        self.assertIn(name, catalogue.clashes)
        self.assertIn("is defined twice", catalogue.clashes[name])
        e = self.assertRaises(PluginLoadError, load, [name], [directory])
        self.assertTrue(str(e).startswith("--plugin {}: plugin {!r} is defined twice".format(name, name)), str(e))

    def test_namelessPluginIgnored(self):
        """A plugin object without a usable name is not listed."""
        directory = self.pluginDirectory()
        self.writePlugin(directory, name="")
        named = self.writePlugin(directory)
        catalogue = discover([directory])
        self.assertNotIn("", catalogue.plugins)
        self.assertIn(named, catalogue.plugins)


class LoadTests(PluginDirectoryMixin, SynchronousTestCase):
    def test_builtWithSettings(self):
        """A --plugin spec builds the plugin's rewriter with its settings."""
        directory = self.pluginDirectory()
        name = self.writePlugin(directory)
        loaded, warnings = load(["{}:a=1,b=x,y".format(name)], [directory])
        [plugin] = loaded
        self.assertEqual((plugin.label, plugin.name), (name, name))
        self.assertEqual(plugin.settings, {"a": "1", "b": "x,y"})
        self.assertEqual(plugin.rewriter.settings, {"a": "1", "b": "x,y"})
        self.assertTrue(IRequestRewriter.providedBy(plugin.rewriter))
        self.assertEqual(warnings, [line for line in warnings if directory not in line])

    def test_noSettings(self):
        """A bare name builds the rewriter with empty settings."""
        directory = self.pluginDirectory()
        name = self.writePlugin(directory)
        [plugin], _ = load([name], [directory])
        self.assertEqual(plugin.rewriter.settings, {})

    def test_secondOccurrenceLabel(self):
        """Two --plugin occurrences of one plugin are labelled name and name#2, each built."""
        directory = self.pluginDirectory()
        name = self.writePlugin(directory)
        other = self.writePlugin(directory)
        loaded, _ = load([name + ":k=1", other, name + ":k=2"], [directory])
        self.assertEqual([p.label for p in loaded], [name, other, name + "#2"])
        self.assertEqual([p.settings for p in loaded], [{"k": "1"}, {}, {"k": "2"}])
        self.assertIsNot(loaded[0].rewriter, loaded[2].rewriter)

    def test_unknownName(self):
        """An unknown name is refused in one line listing the names available."""
        directory = self.pluginDirectory()
        name = self.writePlugin(directory)
        e = self.assertRaises(PluginLoadError, load, ["nope"], [directory])
        text = str(e)
        self.assertTrue(text.startswith("--plugin nope: unknown plugin (available: "), text)
        self.assertIn(name, text)
        self.assertNotIn("\n", text)

    def test_unknownNameMentionsBroken(self):
        """When a module failed to import, the refusal of an unknown name says so, still in one line."""
        directory = self.pluginDirectory()
        bad = self.writeModule(directory, "raise ImportError('needs libfoo\\nmore')\n")
        e = self.assertRaises(PluginLoadError, load, ["nope"], [directory])
        self.assertIn("failed to import: ", str(e))
        self.assertIn(bad, str(e))
        self.assertNotIn("\n", str(e))

    def test_brokenModuleWarning(self):
        """A module that fails to import is a warning line when the plugins asked for load."""
        directory = self.pluginDirectory()
        bad = self.writeModule(directory, "raise ImportError('needs libfoo')\n")
        name = self.writePlugin(directory)
        loaded, warnings = load([name], [directory])
        self.assertEqual([p.name for p in loaded], [name])
        self.assertIn(bad + ": ImportError: needs libfoo", warnings)

    def test_badSettings(self):
        """A PluginSettingsError from makeRewriter is refused as '--plugin NAME: key: why'."""
        directory = self.pluginDirectory()
        name = self.writePlugin(directory, body='raise PluginSettingsError("key: why")')
        e = self.assertRaises(PluginLoadError, load, [name + ":key=1"], [directory])
        self.assertEqual(str(e), "--plugin {}: key: why".format(name))

    def test_couldNotStart(self):
        """Another exception from makeRewriter is one line saying it could not start."""
        directory = self.pluginDirectory()
        name = self.writePlugin(directory, body='raise RuntimeError("disk on fire\\ndetails")')
        e = self.assertRaises(PluginLoadError, load, [name], [directory])
        self.assertEqual(str(e), "--plugin {}: could not start: RuntimeError: disk on fire".format(name))

    def test_rewriterWithoutInterface(self):
        """A rewriter providing none of the hook interfaces is refused."""
        directory = self.pluginDirectory()
        name = self.writePlugin(directory, body="return object()")
        e = self.assertRaises(PluginLoadError, load, [name], [directory])
        self.assertEqual(
            str(e),
            "--plugin {}: its rewriter provides none of IRequestRewriter, IResponseRewriter, IConnectPolicy".format(
                name
            ),
        )

    def test_badSpec(self):
        """A spec whose settings do not parse is refused, naming the plugin."""
        directory = self.pluginDirectory()
        name = self.writePlugin(directory)
        e = self.assertRaises(PluginLoadError, load, [name + ":a=1,a=2"], [directory])
        self.assertEqual(str(e), "--plugin {}: a given twice".format(name))

    def test_nothingAsked(self):
        """No specs build nothing."""
        self.assertEqual(load([])[0], ())


class ParseSpecTests(SynchronousTestCase):
    def test_nameOnly(self):
        """A bare name has no settings."""
        self.assertEqual(parseSpec("block"), ("block", {}))
        self.assertEqual(parseSpec(" block :"), ("block", {}))

    def test_commasInValues(self):
        """A comma not followed by key= belongs to the value."""
        self.assertEqual(
            parseSpec("replace:pattern=a,b,replacement=c"), ("replace", {"pattern": "a,b", "replacement": "c"})
        )

    def test_colonsInValues(self):
        """Only the first colon ends the name."""
        self.assertEqual(parseSpec("redirect:from=http://a/,to=https://b/"),
                         ("redirect", {"from": "http://a/", "to": "https://b/"}))

    def test_escapedComma(self):
        """'\\,' is a literal comma, even before text that looks like key=."""
        self.assertEqual(parseSpec("replace:pattern=a\\,b=c"), ("replace", {"pattern": "a,b=c"}))

    def test_duplicateKey(self):
        """A key given twice is refused, naming the plugin."""
        e = self.assertRaises(PluginLoadError, parseSpec, "block:hosts=a,hosts=b")
        self.assertEqual(str(e), "--plugin block: hosts given twice")

    def test_emptyName(self):
        """A spec without a name is refused."""
        for spec in ("", ":a=1", "  :a=1"):
            e = self.assertRaises(PluginLoadError, parseSpec, spec)
            self.assertIn("expected NAME[:key=value,...]", str(e))

    def test_partWithoutEquals(self):
        """Settings that are not key=value are refused, naming the plugin."""
        e = self.assertRaises(PluginLoadError, parseSpec, "block:hosts")
        self.assertTrue(str(e).startswith("--plugin block: expected key=value"), str(e))


class ListingTests(PluginDirectoryMixin, SynchronousTestCase):
    def test_linePerPlugin(self):
        """The listing has one line per plugin, sorted, with its description."""
        directory = self.pluginDirectory()
        name = self.writePlugin(directory, description="my temporary plugin")
        text = listing([directory])
        catalogue = discover([directory])
        self.assertTrue(text.endswith("\n"))
        lines = text.splitlines()
        names = sorted(catalogue.plugins)
        self.assertEqual([line.split()[0] for line in lines[: len(names)]], names)
        extra = lines[len(names):]
        self.assertEqual(len(extra), len(catalogue.broken) + len(catalogue.clashes))
        [mine] = [line for line in lines if line.split()[0] == name]
        self.assertEqual(mine.split(None, 1)[1], "my temporary plugin")
        for bundled in ("block", "har", "headers", "redirect", "replace"):
            if os.path.exists(os.path.join(BUNDLED, bundled + ".py")):
                self.assertIn(bundled, names)

    def test_descriptionsAligned(self):
        """Descriptions start in one column."""
        directory = self.pluginDirectory()
        self.writePlugin(directory, name=self.unique("tp_a_much_longer_name"), description="long")
        lines = [line for line in listing([directory]).splitlines() if not line.startswith(("failed", "warning"))]
        columns = {len(line) - len(line.split(None, 1)[1]) for line in lines if len(line.split(None, 1)) == 2}
        self.assertEqual(len(columns), 1)

    def test_brokenModuleListed(self):
        """A module that fails to import is listed after the plugins, as one line."""
        directory = self.pluginDirectory()
        bad = self.writeModule(directory, "raise ImportError('needs libfoo')\n")
        lines = listing([directory]).splitlines()
        self.assertIn("failed to import: " + bad + ": ImportError: needs libfoo", lines)

    def test_clashListed(self):
        """A name two files claim is listed as a warning."""
        directory = self.pluginDirectory()
        name = self.unique("tp")
        self.writePlugin(directory, name=name)
        self.writePlugin(directory, name=name)
        lines = listing([directory]).splitlines()
        self.assertEqual(len([line for line in lines if line.startswith("warning: plugin {!r}".format(name))]), 1)

    def test_notADirectory(self):
        """listing refuses a --plugin-path that is not a directory."""
        self.assertRaises(PluginLoadError, listing, [os.path.abspath(self.mktemp())])


class TapOptionTests(PluginDirectoryMixin, SynchronousTestCase):
    def setUp(self):
        PluginDirectoryMixin.setUp(self)
        self.stdout = io.StringIO()
        self.stderr = io.StringIO()
        self.patch(sys, "stdout", self.stdout)
        self.patch(sys, "stderr", self.stderr)

    def parse(self, *argv):
        options = tap.Options(reactor=MemoryReactor())
        options.parseOptions(list(argv))
        return options

    def test_listPlugins(self):
        """--list-plugins prints the listing to stdout and exits 0."""
        directory = self.pluginDirectory()
        name = self.writePlugin(directory, description="listed here")
        e = self.assertRaises(SystemExit, self.parse, "--list-plugins", "--plugin-path", directory)
        self.assertEqual(e.code, 0)
        self.assertEqual(self.stdout.getvalue(), listing([directory]))
        self.assertIn(name, self.stdout.getvalue())
        self.assertIn("listed here", self.stdout.getvalue())

    def test_listPluginsBadPath(self):
        """--list-plugins with a --plugin-path that is not a directory exits with one line naming it."""
        missing = os.path.abspath(self.mktemp())
        e = self.assertRaises(SystemExit, self.parse, "--list-plugins", "--plugin-path", missing)
        self.assertEqual(str(e), "proxyd: --plugin-path {}: not a directory".format(missing))
        self.assertEqual(self.stdout.getvalue(), "")

    def test_unknownPlugin(self):
        """--plugin with an unknown name exits with one line naming it."""
        e = self.assertRaises(SystemExit, self.parse, "--plugin", "nope")
        self.assertTrue(str(e).startswith("proxyd: --plugin nope: unknown plugin"), str(e))
        self.assertNotIn("\n", str(e))

    def test_pluginPathMissing(self):
        """--plugin-path naming no directory exits with one line naming the path."""
        e = self.assertRaises(SystemExit, self.parse, "--plugin-path", "/nonexistent")
        self.assertIn("/nonexistent", str(e))
        self.assertTrue(str(e).startswith("proxyd: --plugin-path"), str(e))
        self.assertNotIn("\n", str(e))

    def test_pluginsLoaded(self):
        """--plugin and --plugin-path load the plugins, in order, into the configuration."""
        directory = self.pluginDirectory()
        name = self.writePlugin(directory)
        options = self.parse("--plugin-path", directory, "--plugin", name + ":k=v", "--plugin", name)
        config = options["proxyConfig"]
        self.assertEqual([p.label for p in config.plugins], [name, name + "#2"])
        self.assertEqual(config.plugins[0].settings, {"k": "v"})
        self.assertEqual(config.pluginPaths, (directory,))

    def test_brokenModuleWarned(self):
        """A plugin module that fails to import is one warning line on stderr; start-up goes on."""
        directory = self.pluginDirectory()
        bad = self.writeModule(directory, "raise ImportError('needs libfoo')\n")
        name = self.writePlugin(directory)
        options = self.parse("--plugin-path", directory, "--plugin", name)
        self.assertEqual(len(options["proxyConfig"].plugins), 1)
        self.assertIn(
            "proxyd: warning: plugin module failed to import: {}: ImportError: needs libfoo\n".format(bad),
            self.stderr.getvalue(),
        )

    def test_pluginBadSettings(self):
        """A plugin refusing its settings stops start-up with one line."""
        directory = self.pluginDirectory()
        name = self.writePlugin(directory, body='raise PluginSettingsError("k: no")')
        e = self.assertRaises(SystemExit, self.parse, "--plugin-path", directory, "--plugin", name + ":k=1")
        self.assertEqual(str(e), "proxyd: --plugin {}: k: no".format(name))

    def test_maxBodyBuffer(self):
        """--max-body-buffer takes sizes with units."""
        self.assertEqual(self.parse("--max-body-buffer", "64k")["proxyConfig"].maxBodyBuffer, 65536)
        self.assertEqual(self.parse("--max-body-buffer=1000")["proxyConfig"].maxBodyBuffer, 1000)

    def test_maxBodyBufferBad(self):
        """A bad --max-body-buffer exits with one line naming the option."""
        e = self.assertRaises(SystemExit, self.parse, "--max-body-buffer", "x")
        self.assertTrue(str(e).startswith("proxyd: --max-body-buffer: "), str(e))
        self.assertNotIn("\n", str(e))

    def test_pluginTimeout(self):
        """--plugin-timeout takes positive seconds."""
        self.assertEqual(self.parse("--plugin-timeout", "2.5")["proxyConfig"].pluginTimeout, 2.5)

    def test_pluginTimeoutRefused(self):
        """--plugin-timeout of 0, a negative number or not a number exits with one line naming it."""
        for value in ("0", "-1", "soon", "nan", "inf"):
            e = self.assertRaises(SystemExit, self.parse, "--plugin-timeout", value)
            self.assertTrue(str(e).startswith("proxyd: --plugin-timeout: "), str(e))
            self.assertNotIn("\n", str(e))
