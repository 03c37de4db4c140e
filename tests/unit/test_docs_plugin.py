"""
docs/plugins.md is run, so that it cannot rot.

Its first python block (the C{stamp} plugin) is loaded the way proxyd
loads plugins, from a C{--plugin-path} directory, and checked against what
the page says of it; its second block (the plugin's test file) and its
third (a body filter and a timeout) have their test functions run; every
C{--plugin} example and TOML block on the page and in the README is
loaded; every C{--option} the page names exists; and the bundled plugins
the page and the README describe are the bundled plugins there are.

Tracebacks from the page's code point at lines of docs/plugins.md.
"""

import ast
import os
import re
import shutil
import sys
import tempfile
import tomllib
import types

from twisted.plugin import IPlugin
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

import proxyd_plugins
from proxyd.config import OPTIONS
from proxyd.interfaces import IConnectPolicy, IProxyPlugin, IRequestRewriter, IResponseRewriter
from proxyd.pluginload import PluginLoadError, discover, listing, load
from proxyd.pluginsettings import parseSize
from proxyd.tap import Options
from proxyd.testing import PluginTester, makeFlow, makeResponse, resultOf

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOCS = os.path.join(ROOT, "docs", "plugins.md")
README = os.path.join(ROOT, "README.md")


def _read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


PAGE = _read(DOCS)
README_TEXT = _read(README)


def fences(text, language):
    """(source, line offset) of each ```language block, in order."""
    return [
        (match.group(1), text[: match.start(1)].count("\n"))
        for match in re.finditer(r"^```" + language + r"\n(.*?)^```", text, re.M | re.S)
    ]


PYTHON = fences(PAGE, "python")
PLUGIN, TEST_FILE, FILTER_EXAMPLE = PYTHON[0], PYTHON[1], PYTHON[2]


def documentedTests(block):
    """The top-level test functions a block defines."""
    return [
        node.name
        for node in ast.parse(block[0]).body
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test")
    ]


def execute(block, name):
    """Run a block as a module named C{name}; line numbers are the page's."""
    source, offset = block
    module = types.ModuleType(name)
    module.__file__ = DOCS
    exec(compile("\n" * offset + source, DOCS, "exec"), module.__dict__)
    return module


def readmePlugins():
    """The README's Plugins section."""
    match = re.search(r"^## Plugins\n(.*?)^## ", README_TEXT, re.M | re.S)
    assert match is not None, "README.md has no '## Plugins' section"
    return match.group(1)


def pluginSpecs(text):
    """Every C{--plugin SPEC} example in C{text}, shell quotes removed; placeholders left out."""
    specs = []
    for match in re.finditer(r"--plugin[ =](?:'([^']*)'|\"([^\"]*)\"|([^\s`'\"]+))", text):
        spec = next(group for group in match.groups() if group is not None)
        if spec.partition(":")[0].isupper():  # NAME:key=value
            continue
        specs.append(spec)
    return specs


def bundledNames():
    """The names of the plugins proxyd ships (defined in the bundled package itself)."""
    bundled = os.path.dirname(os.path.abspath(proxyd_plugins.__file__))
    catalogue = discover()
    return {name for name, origin in catalogue.origins.items() if os.path.dirname(os.path.abspath(origin)) == bundled}


class _PluginDirectory(SynchronousTestCase):
    """Makes a unique --plugin-path directory holding the page's stamp.py."""

    def pluginDirectory(self):
        """
        A fresh directory with stamp.py in it.  Everything loading it
        changes in this process (proxyd_plugins.__path__, sys.path,
        sys.modules) is undone when the test ends.
        """
        directory = tempfile.mkdtemp(prefix="proxyd-docs-plugin-")
        self._forget(directory)
        self.addCleanup(shutil.rmtree, directory, True)
        self.addCleanup(self._forget, directory)
        with open(os.path.join(directory, "stamp.py"), "w", encoding="utf-8") as f:
            f.write(PLUGIN[0])
        return directory

    @staticmethod
    def _forget(directory):
        while directory in proxyd_plugins.__path__:
            proxyd_plugins.__path__.remove(directory)
        while directory in sys.path:
            sys.path.remove(directory)
        for name in ("proxyd_plugins.stamp", "stamp"):
            sys.modules.pop(name, None)
        if "stamp" in vars(proxyd_plugins):
            delattr(proxyd_plugins, "stamp")

    def loadStamp(self, spec, directory=None):
        """The rewriter C{--plugin-path DIR --plugin SPEC} builds."""
        (loaded,), warnings = load([spec], [directory or self.pluginDirectory()])
        self.assertEqual(warnings, [])
        self.assertEqual((loaded.label, loaded.name), ("stamp", "stamp"))
        return loaded.rewriter

    def tester(self, *rewriters):
        """A PluginTester whose clock the stamp rewriters read."""
        tester = PluginTester(*rewriters)
        for rewriter in rewriters:
            if hasattr(rewriter, "clock"):
                rewriter.clock = tester.clock
        return tester


class StampPluginTests(_PluginDirectory):
    """The page's stamp.py, loaded from --plugin-path, does what the page says."""

    def test_loadedFromPluginPath(self):
        """--plugin-path DIR --plugin stamp:... finds it and builds a request and response rewriter."""
        directory = self.pluginDirectory()
        (loaded,), warnings = load(["stamp:header=X-Stamp,host=*.example.com"], [directory])
        self.assertEqual(warnings, [])
        self.assertEqual(loaded.settings, {"header": "X-Stamp", "host": "*.example.com"})
        plugin = sys.modules["proxyd_plugins.stamp"].stamp
        self.assertTrue(verifyObject(IPlugin, plugin))
        self.assertTrue(verifyObject(IProxyPlugin, plugin))
        self.assertTrue(verifyObject(IRequestRewriter, loaded.rewriter))
        self.assertTrue(verifyObject(IResponseRewriter, loaded.rewriter))
        self.assertFalse(IConnectPolicy.providedBy(loaded.rewriter))

    def test_listed(self):
        """--list-plugins and 'proxyd plugins' show it with its description."""
        text = listing([self.pluginDirectory()])
        self.assertRegex(
            text, r"(?m)^stamp +add a request header for host globs; X-Upstream-Ms on responses$"
        )
        for name in bundledNames():
            self.assertRegex(text, r"(?m)^{} ".format(name))

    def test_stampAndUpstreamTime(self):
        """Matching hosts get the header on the request and X-Upstream-Ms on the response."""
        rewriter = self.loadStamp("stamp:header=X-Edge,value=edge-1,host=*.example.com")
        tester = self.tester(rewriter)
        flow = resultOf(tester.request(makeFlow(url=b"http://www.example.com/a", headers={"X-Edge": "client"})))
        self.assertEqual(flow.request.headers.getRawHeaders(b"x-edge"), [b"edge-1"])
        tester.clock.advance(1.5)
        flow = resultOf(tester.response(flow, makeResponse(200, body=b"body")))
        self.assertEqual(flow.response.headers.getRawHeaders(b"x-upstream-ms"), [b"1500"])
        self.assertEqual(flow.response.body, b"body")

    def test_globDoesNotMatchTheDomainItself(self):
        """*.example.com leaves example.com alone; example.com|*.example.com takes both."""
        narrow = self.tester(self.loadStamp("stamp:host=*.example.com"))
        flow = resultOf(narrow.exchange(makeFlow(url=b"http://example.com/"), makeResponse(200)))
        self.assertIsNone(flow.request.header(b"x-stamp"))
        self.assertIsNone(flow.response.header(b"x-upstream-ms"))
        both = self.tester(self.loadStamp("stamp:header=X-Stamp,value=edge-1,host=example.com|*.example.com"))
        for url in (b"http://example.com/", b"http://a.b.example.com/"):
            flow = resultOf(both.exchange(makeFlow(url=url), makeResponse(200)))
            self.assertEqual(flow.request.header(b"x-stamp"), b"edge-1")
            self.assertEqual(flow.response.header(b"x-upstream-ms"), b"0")

    def test_defaults(self):
        """Without settings: X-Stamp: proxyd on every host."""
        tester = self.tester(self.loadStamp("stamp"))
        flow = resultOf(tester.exchange(makeFlow(url=b"http://anything.test/"), makeResponse(204)))
        self.assertEqual(flow.request.header(b"x-stamp"), b"proxyd")
        self.assertEqual(flow.response.header(b"x-upstream-ms"), b"0")

    def test_statePerRequest(self):
        """Interleaved requests each get their own time: the state is in flow.notes."""
        tester = self.tester(self.loadStamp("stamp"))
        first = resultOf(tester.request(makeFlow(url=b"http://a.test/")))
        tester.clock.advance(1)
        second = resultOf(tester.request(makeFlow(url=b"http://b.test/")))
        tester.clock.advance(1)
        self.assertEqual(resultOf(tester.response(first, makeResponse(200))).response.header(b"x-upstream-ms"), b"2000")
        tester.clock.advance(0.5)
        self.assertEqual(resultOf(tester.response(second, makeResponse(200))).response.header(b"x-upstream-ms"), b"1500")

    def test_shortCircuitAndOrder(self):
        """
        A request hook's Response skips later request hooks and the
        upstream, and every response hook still sees it: with block
        first, stamp never stamps the request but sees the 403; with stamp
        first, the 403 carries X-Upstream-Ms.
        """
        directory = self.pluginDirectory()
        specs = ["block:hosts=ads.test", "stamp"]
        for order in (specs, specs[::-1]):
            loaded, _ = load(order, [directory])
            tester = self.tester(*[plugin.rewriter for plugin in loaded])
            flow = resultOf(tester.request(makeFlow(url=b"http://ads.test/x")))
            self.assertEqual(flow.response.status, 403)
            stampedFirst = order[0] == "stamp"
            self.assertEqual(flow.request.header(b"x-stamp"), b"proxyd" if stampedFirst else None)
            self.assertEqual(flow.response.header(b"x-upstream-ms"), b"0" if stampedFirst else None)

    def test_badSettingsRefusedAtStart(self):
        """Bad settings stop the start with the line the page shows."""
        directory = self.pluginDirectory()
        for spec, line in [
            ("stamp:header=X Stamp", "--plugin stamp: header: 'X Stamp' is not a header name"),
            ("stamp:colour=red", "--plugin stamp: colour: unknown setting (expected header, host, value)"),
            ("stamp:host=a.test,b.test", "--plugin stamp: host: separate host globs with |, not a comma ('a.test,b.test')"),
            ("stamp:header=A,header=B", "--plugin stamp: header given twice"),
        ]:
            with self.assertRaises(PluginLoadError) as caught:
                load([spec], [directory])
            self.assertEqual(str(caught.exception), line)

    def test_commaRule(self):
        """A comma separates settings only before key=; \\, keeps one that would."""
        directory = self.pluginDirectory()
        rewriter = self.loadStamp("stamp:value=a,b,host=x.test", directory)
        self.assertEqual((rewriter.value, rewriter.hosts), (b"a,b", ("x.test",)))
        rewriter = self.loadStamp("stamp:value=a\\,host=b", directory)
        self.assertEqual((rewriter.value, rewriter.hosts), (b"a,host=b", ()))

    def test_secondOccurrenceLabel(self):
        """Each occurrence gets its own rewriter; the second is labelled stamp#2."""
        loaded, _ = load(["stamp:header=X-A", "stamp:header=X-B"], [self.pluginDirectory()])
        self.assertEqual([plugin.label for plugin in loaded], ["stamp", "stamp#2"])
        self.assertIsNot(loaded[0].rewriter, loaded[1].rewriter)


class DocumentedTestFile(_PluginDirectory):
    """The page's test_stamp.py, run against the page's stamp.py."""

    def run_documented(self, name):
        directory = self.pluginDirectory()
        sys.path.insert(0, directory)  # PYTHONPATH=~/proxyd-plugins
        getattr(execute(TEST_FILE, "test_stamp"), name)()


class DocumentedFilterExample(SynchronousTestCase):
    """The page's body filter and timeout example, run."""

    def run_documented(self, name):
        getattr(execute(FILTER_EXAMPLE, "docs_filter_example"), name)()


def _addDocumented(cls, block, least):
    names = documentedTests(block)
    assert len(names) >= least, "docs/plugins.md lost the tests of its python block at line {}".format(block[1])
    for name in names:
        def test(self, name=name):
            self.run_documented(name)

        test.__name__ = name
        test.__doc__ = "docs/plugins.md: {}".format(name)
        setattr(cls, name, test)


_addDocumented(DocumentedTestFile, TEST_FILE, 4)
_addDocumented(DocumentedFilterExample, FILTER_EXAMPLE, 2)


class PageTests(_PluginDirectory):
    """What the page and the README say about options and bundled plugins holds."""

    def test_pythonBlocksCompile(self):
        """Every python block on the page is valid Python."""
        for source, offset in PYTHON:
            compile("\n" * offset + source, DOCS, "exec")

    def test_pluginExamplesLoad(self):
        """Every --plugin example on the page and in the README's Plugins section is accepted."""
        directory = self.pluginDirectory()
        specs = pluginSpecs(PAGE) + pluginSpecs(readmePlugins())
        self.assertGreaterEqual(len(specs), 8)
        for spec in specs:
            try:
                load([spec], [directory])
            except PluginLoadError as e:
                self.fail("{!r}: {}".format(spec, e))

    def test_tomlExamples(self):
        """The TOML blocks use real options with the right types, and their plugins load."""
        directory = self.pluginDirectory()
        blocks = [tomllib.loads(source) for source, _ in fences(PAGE, "toml")]
        settings = [data for data in blocks if "build-system" not in data]
        packages = [data for data in blocks if "build-system" in data]
        self.assertTrue(settings and packages)
        for data in settings:
            self.assertLessEqual(set(data), set(OPTIONS))
            self.assertIsInstance(data["plugin"], list)
            self.assertIsInstance(data["plugin-path"], list)
            load(data["plugin"], [directory])
            parseSize(data["max-body-buffer"])
            self.assertIsInstance(data["plugin-timeout"], (int, float))
        for data in packages:
            self.assertEqual(data["tool"]["setuptools"]["packages"], ["proxyd_plugins"])

    def test_optionsExist(self):
        """Every --option the page names is a twistd proxyd option."""
        known = {option.rstrip("=") for option in Options().longOpt}
        named = set(re.findall(r"(?<![\w-])--([a-z][a-z-]*)", PAGE))
        self.assertTrue(named)
        self.assertEqual(named - known, set())

    def test_bundledPluginsDescribed(self):
        """The page and the README describe exactly the bundled plugins, and the README links the page."""
        bundled = bundledNames()
        self.assertEqual(bundled, {"headers", "block", "redirect", "replace", "har"})
        section = PAGE.split("\n## The bundled plugins\n", 1)[1]
        self.assertEqual(set(re.findall(r"(?m)^\*\*`([a-z]+)`\*\*", section)), bundled)
        readme = readmePlugins()
        self.assertEqual(set(re.findall(r"(?m)^\| `([a-z]+)` \|", readme)), bundled)
        self.assertIn("(docs/plugins.md)", readme)
        self.assertLessEqual(len(readme.strip().splitlines()), 25)
