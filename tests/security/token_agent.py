"""Run one of the agent programs of ``tests/agents`` with a token in the stock proxy's
``headers=``, the way the README tells users to authenticate.

The program is unchanged: its stock proxy class (``WebSocketProxyClientAgent`` of
pipecat-ai-subagents, ``WebSocketProxyClient`` of pipecat core) is handed
``headers={"Authorization": "Bearer <token>"}`` on construction.

Run: ``python -m tests.security.token_agent --token T tests.agents.subagents_worker
--url ws://127.0.0.1:8765 --name worker --peer client``.
"""

import argparse
import asyncio
import functools
import importlib
import sys

PROXY_CLASSES = ("WebSocketProxyClientAgent", "WebSocketProxyClient")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--token", required=True)
    parser.add_argument("program", help="module of tests/agents to run")
    parser.add_argument("rest", nargs=argparse.REMAINDER, help="the program's own arguments")
    args = parser.parse_args()
    rest = args.rest
    module = importlib.import_module(args.program)
    headers = {"Authorization": f"Bearer {args.token}"}
    patched = [name for name in PROXY_CLASSES if hasattr(module, name)]
    if len(patched) != 1:
        raise SystemExit(f"{args.program} does not use exactly one stock proxy: {patched}")
    setattr(module, patched[0], functools.partial(getattr(module, patched[0]), headers=headers))
    sys.argv = [args.program, *rest]
    code: int = asyncio.run(module.main())
    return code


if __name__ == "__main__":
    sys.exit(main())
