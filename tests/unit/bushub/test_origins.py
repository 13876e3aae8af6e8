"""Which browser pages may open a socket (bushub.origins): pure logic."""

import pytest

from bushub.origins import OriginPolicy, normalized, origin_problem


@pytest.mark.parametrize(
    ("configured", "sent"),
    [
        ("https://App.Example.com/", "https://app.example.com"),
        ("HTTPS://app.example.com:443", "https://app.example.com"),
        ("http://localhost:3000", "http://localhost:3000"),
        ("http://[::1]:8080", "http://[::1]:8080"),
        # A browser sends an internationalized host in its ASCII form.
        ("https://b\u00fccher.example", "https://xn--bcher-kva.example"),
    ],
)
def test_a_configured_origin_matches_what_a_browser_sends(configured: str, sent: str) -> None:
    assert normalized(configured) == sent
    assert OriginPolicy([configured], auth_enabled=False).allows(sent)


def test_without_a_list_auth_decides() -> None:
    off = OriginPolicy([], auth_enabled=False)
    assert off.refuses_browsers
    assert not off.allows("https://evil.example")
    assert off.allows(None)  # no Origin: not a browser
    # Listing would let a site in, not the origin any site's sandboxed frame sends.
    assert off.wants_listing("https://evil.example") and not off.wants_listing("null")
    # With auth on a page gets nowhere without a token, which no browser adds itself.
    assert OriginPolicy([], auth_enabled=True).allows("https://evil.example")


def test_a_star_lets_every_origin_in() -> None:
    policy = OriginPolicy(["*"], auth_enabled=False)
    assert policy.allows("https://evil.example")
    assert policy.allows("null")  # a sandboxed frame's
    assert not policy.refuses_browsers


def test_a_listed_origin_is_matched_exactly() -> None:
    policy = OriginPolicy(["https://app.example.com"], auth_enabled=True)
    for other in (
        "http://app.example.com",
        "https://app.example.com:8443",
        "https://app.example.com.evil.com",
        "null",
        "\xff\xfe",
    ):
        assert not policy.allows(other)


@pytest.mark.parametrize(
    "value",
    [
        "app.example.com",
        "https://a.example/app",
        "https://a.example?x=1",
        "http://a:99999",
        "null",  # any site's sandboxed frame sends it: listed, it let every site in
        "NULL",
    ],
)
def test_a_value_that_is_no_origin_is_named(value: str) -> None:
    assert origin_problem(value) is not None


@pytest.mark.parametrize("value", ["*", "https://a.example", "http://a.example:8080/"])
def test_origins_pass(value: str) -> None:
    assert origin_problem(value) is None
