"""The operator console: one HTML page (markup, style and script inline, no build step).

The page holds no data; it reads the Operator API (docs/protocol.md) with the admin
token the operator types. It ships as package data, so an installed node serves it
without the source tree.
"""

from functools import cache
from importlib.resources import files


@cache
def page() -> bytes:
    """The console page's HTML, read from the package once."""
    return files(__name__).joinpath("console.html").read_bytes()
