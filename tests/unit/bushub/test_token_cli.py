"""``bushub token``: what its help says, and how long the token it prints lives."""

import argparse
import types
from typing import Any

import jwt
import pytest

from bushub import token_cli

SECRET = "token-cli-test-secret-0123456789abcdef"


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="bushub")
    token_cli.add_token_command(root.add_subparsers(dest="command"))
    return root


def issue(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], now: float, *argv: str
) -> dict[str, Any]:
    """The claims of the token ``bushub token ARGV`` prints at ``now``."""
    monkeypatch.setattr(token_cli, "time", types.SimpleNamespace(time=lambda: now))
    args = parser().parse_args(["token", "--secret", SECRET, "--agent", "a", *argv])
    token_cli.run_token_command(args)
    token = capsys.readouterr().out.splitlines()[-1]
    claims: dict[str, Any] = jwt.decode(
        token, SECRET, algorithms=["HS256"], options={"verify_exp": False}
    )
    return claims


def test_help_shows_the_ttl_default(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parser().parse_args(["token", "--help"])
    assert "(default: 3600;" in " ".join(capsys.readouterr().out.split())
    assert parser().parse_args(["token", "--secret", "s", "--agent", "a"]).ttl == 3600


@pytest.mark.parametrize("argv", [(), ("--ttl", "3600")])
def test_exp_minus_iat_is_rounding_not_an_extra_second(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...]
) -> None:
    """A user saw ``exp - iat`` = 3601 for an hour: iat is rounded down and exp up, so
    the token lives at least the hour from when it was issued and under a second more."""
    now = 1_700_000_000.25
    claims = issue(monkeypatch, capsys, now, *argv)
    assert (claims["iat"], claims["exp"]) == (1_700_000_000, 1_700_003_601)
    assert 3600 <= claims["exp"] - now < 3601
    # Issued on a whole second, nothing is rounded: exactly the hour.
    claims = issue(monkeypatch, capsys, 1_700_000_000.0, *argv)
    assert claims["exp"] - claims["iat"] == 3600


def test_a_short_lifetime_still_ends_after_the_token_was_issued(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    now = 1_700_000_000.9
    claims = issue(monkeypatch, capsys, now, "--ttl", "0.05")
    assert claims["exp"] > now


@pytest.mark.parametrize("ttl", ["1e308", str(token_cli.MOST_TTL + 1)])
def test_a_lifetime_over_ten_years_is_refused(ttl: str, capsys: pytest.CaptureFixture[str]) -> None:
    """1e308 made an exp of 309 digits: a mistake, which other readers of the token
    overflow on."""
    with pytest.raises(SystemExit):
        parser().parse_args(["token", "--secret", SECRET, "--agent", "a", "--ttl", ttl])
    assert "over ten years" in capsys.readouterr().err
    ten_years = parser().parse_args(
        ["token", "--secret", SECRET, "--agent", "a", "--ttl", str(token_cli.MOST_TTL)]
    )
    assert ten_years.ttl == token_cli.MOST_TTL
