"""Shared fixtures for the buswire unit tests.

buswire itself never imports pipecat; its tests do, to check every wire claim
against the libraries' own serializers.
"""

from typing import Any

import pytest


@pytest.fixture(scope="session")
def subagents_serializer() -> Any:
    """The JSON serializer of pipecat-ai-subagents, as clients use it."""
    from pipecat_subagents.bus.serializers import JSONMessageSerializer

    return JSONMessageSerializer()


@pytest.fixture(scope="session")
def pipecat_serializer() -> Any:
    """The JSON serializer of pipecat-ai core, as clients use it."""
    from pipecat.bus.serializers import JSONMessageSerializer

    return JSONMessageSerializer()
