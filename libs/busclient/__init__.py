"""What pipecat clients import to talk to bushub.

Each dialect's serializer lives in its own module so that it imports only its own
library: ``busclient.subagents`` needs ``pipecat-ai-subagents``,
``busclient.pipecat_core`` needs ``pipecat-ai``.
"""
