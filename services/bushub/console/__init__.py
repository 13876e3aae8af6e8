"""The operator console: one HTML page (markup, style and script inline, no build step).

The page holds no data; it reads the Operator API (docs/protocol.md) with the admin
token the operator types. It ships as package data, so an installed node serves it
without the source tree.
"""

from functools import cache
from importlib.resources import files


@cache
def page(on: bool = True) -> bytes:
    """The console page's HTML, read from the package once; ``on`` says whether the
    node serves the Operator API (``data-console`` on the page's root): the page
    asked the API without a token to learn it, and every visit was counted and
    logged as a request refused for a bad admin token."""
    html = files(__name__).joinpath("console.html").read_bytes()
    state = b"on" if on else b"off"
    return html.replace(b'<html lang="en">', b'<html lang="en" data-console="' + state + b'">', 1)
