"""Shared setup for the busclient serializer tests."""

from collections.abc import Iterator

import pytest
from loguru import logger


@pytest.fixture(autouse=True, scope="module")
def quiet_library_serializers() -> Iterator[None]:
    """Silence the libraries' loguru warnings about fields they skip (tuples, callables).

    Both serializers skip the same fields, which the round-trip tests check; the
    warnings would only bury real output.
    """
    names = ("pipecat.bus.serializers", "pipecat_subagents.bus.serializers")
    for name in names:
        logger.disable(name)
    yield
    for name in names:
        logger.enable(name)
