# -*- test-case-name: tests.unit.test_pluginload -*-
"""
Finding plugins and building the rewriters C{--plugin} asks for.

Discovery is C{twisted.plugin.getPlugins(IProxyPlugin, proxyd_plugins)}:
the bundled plugins, every C{--plugin-path} directory (appended to the
package's C{__path__}, as C{twisted/plugins/__init__.py} does for
twistd's), and C{proxyd_plugins/} directories of installed packages.

getPlugins logs a whole traceback for a module that fails to import, and
twistd would replay it into the log later; proxyd imports each module
first, turns a failure into one line naming the file, and hands getPlugins
an empty stand-in for that module.
"""

import importlib
import os
import sys
import types

import attr
from twisted.plugin import getPlugins
from twisted.python.modules import getModule

from proxyd.interfaces import IConnectPolicy, IProxyPlugin, IRequestRewriter, IResponseRewriter, PluginSettingsError
from proxyd.pluginsettings import parseSettings

PACKAGE = "proxyd_plugins"


class PluginLoadError(Exception):
    """One line saying why the plugins asked for cannot be used."""


@attr.s(frozen=True)
class LoadedPlugin:
    """One C{--plugin} occurrence, built."""

    label = attr.ib()  # name, or name#2 for its second occurrence
    name = attr.ib()
    settings = attr.ib()
    rewriter = attr.ib(eq=False)


@attr.s
class Catalogue:
    """
    The plugins found: C{plugins} maps name to plugin object,
    C{origins} name to the file that defines it, C{broken} holds one line
    per module that failed to import, C{clashes} one line per name two
    files both claim.
    """

    plugins = attr.ib(factory=dict)
    origins = attr.ib(factory=dict)
    broken = attr.ib(factory=list)
    clashes = attr.ib(factory=dict)


def _package(paths):
    package = importlib.import_module(PACKAGE)
    for path in paths:
        path = os.path.abspath(path)
        if not os.path.isdir(path):
            raise PluginLoadError("--plugin-path {}: not a directory".format(path))
        if path not in package.__path__:
            package.__path__.append(path)
    return package


# Modules that failed to import in this process, by name: their stand-ins
# sit in sys.modules, so later discoveries report them from here.
_broken = {}


def _preImport(package):
    """Import every plugin module; a failure is one line and a stand-in."""
    broken = []
    for module in getModule(package.__name__).iterModules():
        if module.name in _broken and sys.modules.get(module.name) is _broken[module.name][0]:
            broken.append(_broken[module.name][1])
            continue
        if module.name in sys.modules:
            continue
        try:
            importlib.import_module(module.name)
        except BaseException as e:
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise
            broken.append("{}: {}".format(module.filePath.path, _oneLine(e)))
            stub = types.ModuleType(module.name)
            _broken[module.name] = (stub, broken[-1])
            sys.modules[module.name] = stub
            setattr(package, module.name.rpartition(".")[2], stub)
    return broken


def _oneLine(e):
    if isinstance(e, SyntaxError):
        return "SyntaxError: {} (line {})".format(e.msg, e.lineno)
    text = str(e).splitlines()[0] if str(e) else ""
    return "{}: {}".format(type(e).__name__, text) if text else type(e).__name__


def discover(paths=()):
    """
    @param paths: the C{--plugin-path} directories.
    @return: a L{Catalogue}.
    @raise PluginLoadError: a path that is not a directory.
    """
    package = _package(paths)
    catalogue = Catalogue(broken=_preImport(package))
    for plugin in getPlugins(IProxyPlugin, package):
        name = getattr(plugin, "name", None)
        if not isinstance(name, str) or not name:
            continue
        origin = _origin(plugin)
        if name in catalogue.plugins:
            catalogue.clashes[name] = "plugin {!r} is defined twice: {} and {}".format(
                name, catalogue.origins[name], origin
            )
            continue
        catalogue.plugins[name] = plugin
        catalogue.origins[name] = origin
    return catalogue


def _origin(plugin):
    module = sys.modules.get(type(plugin).__module__)
    return getattr(module, "__file__", None) or type(plugin).__module__


def parseSpec(text):
    """
    C{NAME[:key=value,...]} to (name, settings).

    @raise PluginLoadError: no name, or settings that do not parse.
    """
    name, _, rest = text.partition(":")
    name = name.strip()
    if not name:
        raise PluginLoadError("--plugin {!r}: expected NAME[:key=value,...]".format(text))
    try:
        return name, parseSettings(rest)
    except ValueError as e:
        raise PluginLoadError("--plugin {}: {}".format(name, e))


def load(specs, paths=()):
    """
    Build one rewriter per C{--plugin} spec, in order.

    @return: (tuple of L{LoadedPlugin}, list of warning lines for modules
        that failed to import).
    @raise PluginLoadError: an unknown name, bad settings, or a rewriter
        that provides no hook interface.
    """
    catalogue = discover(paths)
    parsed = [parseSpec(spec) for spec in specs]
    loaded = []
    seen = {}
    for name, settings in parsed:
        plugin = catalogue.plugins.get(name)
        if plugin is None:
            available = ", ".join(sorted(catalogue.plugins)) or "none"
            why = "--plugin {}: unknown plugin (available: {})".format(name, available)
            if catalogue.broken:
                why += "; failed to import: " + "; ".join(catalogue.broken)
            raise PluginLoadError(why)
        if name in catalogue.clashes:
            raise PluginLoadError("--plugin {}: {}".format(name, catalogue.clashes[name]))
        try:
            rewriter = plugin.makeRewriter(dict(settings))
        except PluginSettingsError as e:
            raise PluginLoadError("--plugin {}: {}".format(name, e))
        except Exception as e:
            raise PluginLoadError("--plugin {}: could not start: {}".format(name, _oneLine(e)))
        if not any(i.providedBy(rewriter) for i in (IRequestRewriter, IResponseRewriter, IConnectPolicy)):
            raise PluginLoadError(
                "--plugin {}: its rewriter provides none of IRequestRewriter, "
                "IResponseRewriter, IConnectPolicy".format(name)
            )
        seen[name] = seen.get(name, 0) + 1
        label = name if seen[name] == 1 else "{}#{}".format(name, seen[name])
        loaded.append(LoadedPlugin(label, name, settings, rewriter))
    return tuple(loaded), list(catalogue.broken)


def listing(paths=()):
    """The text of C{--list-plugins}: a line per plugin, then problems."""
    catalogue = discover(paths)
    lines = []
    width = max([len(name) for name in catalogue.plugins] + [4])
    for name in sorted(catalogue.plugins):
        description = getattr(catalogue.plugins[name], "description", "") or ""
        lines.append("{}  {}".format(name.ljust(width), description))
    if not catalogue.plugins:
        lines.append("(no plugins found)")
    for line in catalogue.broken:
        lines.append("failed to import: " + line)
    for line in catalogue.clashes.values():
        lines.append("warning: " + line)
    return "\n".join(lines) + "\n"

