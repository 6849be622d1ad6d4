"""The daemon's control API: an HTTP server (aiohttp) on a unix socket in the supervisor's own
event loop, its client for the CLI verbs, and the Prometheus metrics it serves. The API talks
to the supervisor only through the `ControlTarget` protocol of `api`, so nothing here knows
the loop.

May import: `config`, `files`, `exitcodes`.
"""
