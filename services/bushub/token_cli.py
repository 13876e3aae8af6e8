"""``bushub token``: print an HS256 token for local testing."""

import argparse
import math
import time

from bushub.auth import make_token


def _secret(value: str) -> str:
    if not value.strip():
        raise argparse.ArgumentTypeError("must not be empty or blank (the hub's --jwt-secret)")
    return value


def _pattern(value: str) -> str:
    if not value:
        raise argparse.ArgumentTypeError("must not be empty (a name or a glob such as voice-*)")
    return value


# The longest a token may live: ten years. Past it a --ttl is a mistake (1e308 made an
# exp of 309 digits, which other readers of the token overflow on).
MOST_TTL = 10 * 365 * 24 * 3600


def _lifetime(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds") from None
    if not (math.isfinite(seconds) and seconds > 0):
        raise argparse.ArgumentTypeError(f"{value} s: a token must live a while (> 0 s)")
    if seconds > MOST_TTL:
        raise argparse.ArgumentTypeError(f"{value} s: over ten years ({MOST_TTL} s)")
    return seconds


def add_token_command(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Register ``bushub token``."""
    parser = commands.add_parser("token", help="print an HS256 token (last line of stdout)")
    parser.add_argument("--secret", required=True, type=_secret, help="the hub's --jwt-secret")
    parser.add_argument(
        "--agent",
        action="append",
        required=True,
        type=_pattern,
        help="agent name or glob (* any run of characters, ? any one) it may hold (repeat)",
    )
    parser.add_argument(
        "--targets",
        action="append",
        default=[],
        type=_pattern,
        help="agent name or glob it may address (repeat)",
    )
    # A token's exp - iat usually reads one more than --ttl (3601 for 3600), which is
    # no off-by-one: make_token rounds iat down and exp up to whole seconds, so the
    # token lives at least --ttl from when it was issued and under a second more.
    parser.add_argument(
        "--ttl",
        type=_lifetime,
        default=3600.0,
        help="lifetime in seconds (default: %(default)g; exp is rounded up to a whole second)",
    )


def run_token_command(args: argparse.Namespace) -> None:
    """Print the token as the last line of stdout."""
    print(make_token(args.secret, args.agent, args.targets, args.ttl, time.time()))
