"""Serving a generator: the Ray Serve application (app), the sampling it runs (sampling), and a
client.

`raygan.serve:app_builder`, the import path of Serve configs written before this package
existed, still resolves (to raygan.serve.app.app_builder) without importing Ray until asked.
"""

_APP_NAMES = ("app_builder", "ServeArgs", "start_server", "shutdown_server")


def __getattr__(name: str):
    if name in _APP_NAMES:
        from raygan.serve import app

        return getattr(app, name)
    raise AttributeError(f"module 'raygan.serve' has no attribute {name!r}")
