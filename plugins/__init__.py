"""Built-in plugins. Each is loaded through the ``sovereign.plugins`` entry points, exactly like
a third-party one, and talks to the hub only through :mod:`hub.plugin_api`."""
