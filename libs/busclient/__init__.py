"""What pipecat clients import to talk to bushub.

Each dialect's serializer lives in its own module so that it imports only its own
library: ``busclient.subagents`` needs ``pipecat-ai-subagents``,
``busclient.pipecat_core`` needs ``pipecat-ai``. Likewise the reconnecting proxies:
``busclient.reconnecting_subagents`` and ``busclient.reconnecting_pipecat``, on the
dialect-free logic of ``busclient.reconnecting``.
"""
