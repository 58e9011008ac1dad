"""Serving a generator: the Ray Serve application (app), the sampling it runs (sampling), and a
client.
"""
