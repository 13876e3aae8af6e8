"""Brokers carry agent channels and presence records between hub nodes."""

from bushub.broker.base import Broker, MessageHandler
from bushub.broker.memory import MemoryBroker

__all__ = ["Broker", "MemoryBroker", "MessageHandler"]
