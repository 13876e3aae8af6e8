"""MsgPack serializer for pipecat core (``pipecat.bus``) clients.

Example::

    from busclient.pipecat_core import MsgPackMessageSerializer

    proxy = WebSocketProxyClient(
        "proxy",
        url="ws://hub:8765/ws/voice?peer=worker&format=msgpack",
        remote_worker_name="worker",
        local_worker_name="voice",
        serializer=MsgPackMessageSerializer(),
    )
"""

from pipecat.bus.serializers import JSONMessageSerializer

from busclient.msgpack_tree import MsgPackTreeMixin


class MsgPackMessageSerializer(MsgPackTreeMixin, JSONMessageSerializer):
    """The pipecat JSON serializer's tree, encoded as MsgPack with native bytes."""


__all__ = ["MsgPackMessageSerializer"]
