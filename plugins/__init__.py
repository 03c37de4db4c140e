"""
Bundled rewriting plugins, installed as the ``proxyd_plugins`` package.

Plugins are discovered with ``twisted.plugin.getPlugins`` over this
package.  Like ``twisted/plugins``, its path also takes in every
``proxyd_plugins/`` directory (without an ``__init__.py``) on ``sys.path``,
so an installed distribution can ship plugins; ``--plugin-path``
directories are appended at start-up.
"""

from twisted.plugin import pluginPackagePaths

__path__.extend(pluginPackagePaths(__name__))  # noqa: F821
__all__ = []
