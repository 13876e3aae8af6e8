"""The ASGI fallback: under a WebSocket protocol other than the hub's own (here
uvicorn's stock ``websockets-sansio``), agent sockets are served by a reader and a
writer task over the ASGI channel, and must route, keep order and cut off slow
consumers exactly as the direct path does. The tests are the direct path's own,
collected again here against a node served the other way."""

from collections.abc import AsyncIterator

import pytest

from bushub.settings import Settings
from tests.unit.bushub.conftest import RunningHub, running_hub
from tests.unit.bushub.test_backpressure import hub_settings as backpressure_settings
from tests.unit.bushub.test_backpressure import (  # noqa: F401 (collected here again)
    slow,
    test_every_message_to_a_slow_consumer_is_delivered_or_counted,
    test_slow_consumer_closed_4008_while_healthy_pair_keeps_receiving,
    test_slow_consumer_that_never_reads_is_released,
)
from tests.unit.bushub.test_routing import (  # noqa: F401 (collected here again)
    test_per_pair_order_over_1000_messages,
    test_targeted_frame_reaches_target_byte_identical,
    test_text_frame_with_json_is_routed_as_binary,
    test_untargeted_frame_goes_to_the_connections_peer,
)


@pytest.fixture
def hub_settings() -> Settings:
    return backpressure_settings.__wrapped__()  # type: ignore[attr-defined, no-any-return]


@pytest.fixture
async def node(hub_settings: Settings) -> AsyncIterator[RunningHub]:
    async with running_hub(hub_settings, ws="websockets-sansio") as running:
        assert not running.hub.settings.redis_url
        yield running


async def test_sockets_take_the_fallback_path(node: RunningHub) -> None:
    async with node.connect("a"):
        await node.wait_metric("bushub_connections", 1)
        [conn] = node.hub.presence.holders.values()
        assert conn.outlet is None  # no direct path under this protocol


async def test_the_hubs_own_protocol_takes_the_direct_path(hub_settings: Settings) -> None:
    async with running_hub(hub_settings) as direct, direct.connect("a"):
        await direct.wait_metric("bushub_connections", 1)
        [conn] = direct.hub.presence.holders.values()
        assert conn.outlet is not None
