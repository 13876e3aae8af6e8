"""MsgPack serializer for ``pipecat-ai-subagents`` clients.

Example::

    from busclient.subagents import MsgPackMessageSerializer

    proxy = WebSocketProxyClientAgent(
        "proxy",
        bus=runner.bus,
        url="ws://hub:8765/ws/voice?peer=worker&format=msgpack",
        remote_agent_name="worker",
        local_agent_name="voice",
        serializer=MsgPackMessageSerializer(),
    )
"""

from pipecat_subagents.bus.serializers import JSONMessageSerializer

from busclient.msgpack_tree import MsgPackTreeMixin


class MsgPackMessageSerializer(MsgPackTreeMixin, JSONMessageSerializer):  # type: ignore[misc]
    """The subagents JSON serializer's tree, encoded as MsgPack with native bytes."""


__all__ = ["MsgPackMessageSerializer"]
