"""``bushub token``: print an HS256 token for local testing."""

import argparse
import time

from bushub.auth import make_token


def add_token_command(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Register ``bushub token``."""
    parser = commands.add_parser("token", help="print an HS256 token (last line of stdout)")
    parser.add_argument("--secret", required=True, help="the hub's --jwt-secret")
    parser.add_argument(
        "--agent", action="append", required=True, help="agent name or glob it may hold (repeat)"
    )
    parser.add_argument(
        "--targets", action="append", default=[], help="agent name or glob it may address (repeat)"
    )
    parser.add_argument("--ttl", type=float, default=3600.0, help="lifetime in seconds")


def run_token_command(args: argparse.Namespace) -> None:
    """Print the token as the last line of stdout."""
    print(make_token(args.secret, args.agent, args.targets, args.ttl, time.time()))
