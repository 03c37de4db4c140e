"""Bundled rewriting plugins, installed as the ``proxyd_plugins`` package.

Plugins are discovered with ``twisted.plugin.getPlugins`` over this package;
``--plugin-path`` directories are appended to its ``__path__``.
"""
