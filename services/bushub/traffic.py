"""The per-message metrics, kept as plain integers and exported on collection.

Five series move with every frame: messages received and delivered by format,
bytes received and sent, and the relay latency histogram. prometheus-client's
``Counter.inc`` takes a lock and ``Histogram.observe`` walks its buckets in
Python; per frame that was a few per cent of the relay's CPU. Here a frame costs
a few integer additions and one ``bisect``; a scrape builds the families from
them. One event loop owns a node, so nothing needs a lock.
"""

from bisect import bisect_left
from collections.abc import Iterable, Sequence
from itertools import accumulate

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

FORMATS = ("json", "msgpack")


class Traffic(Collector):
    """Counts of the relay's hot path, exported under the contract's names.

    Args:
        latency_buckets: Upper bounds of the relay latency histogram, ascending.
    """

    def __init__(self, latency_buckets: Sequence[float]) -> None:
        self.received = dict.fromkeys(FORMATS, 0)
        self.delivered = dict.fromkeys(FORMATS, 0)
        self.bytes_received = 0
        self.bytes_sent = 0
        self._bounds = tuple(latency_buckets)
        # One slot per bound plus +Inf; not cumulative until exported.
        self._latency_counts = [0] * (len(self._bounds) + 1)
        self._latency_sum = 0.0

    def observe_latency(self, seconds: float) -> None:
        """Record one relay latency (receive on one node to send on another)."""
        self._latency_counts[bisect_left(self._bounds, seconds)] += 1
        self._latency_sum += seconds

    def collect(self) -> Iterable[Metric]:
        received = CounterMetricFamily(
            "bushub_messages_received", "Frames received from clients", labels=["format"]
        )
        delivered = CounterMetricFamily(
            "bushub_messages_delivered",
            "Messages sent to clients (acknowledgements to session sockets not counted)",
            labels=["format"],
        )
        for fmt in FORMATS:
            received.add_metric([fmt], self.received[fmt])
            delivered.add_metric([fmt], self.delivered[fmt])
        yield received
        yield delivered
        yield CounterMetricFamily(
            "bushub_bytes_received", "Frame bytes received from clients", self.bytes_received
        )
        yield CounterMetricFamily(
            "bushub_bytes_sent", "Frame bytes sent to clients", self.bytes_sent
        )
        cumulative = list(accumulate(self._latency_counts))
        bounds = [*(floatToGoString(b) for b in self._bounds), "+Inf"]  # type: ignore[no-untyped-call]
        yield HistogramMetricFamily(
            "bushub_relay_latency_seconds",
            "From receive on the publishing node to send on the delivering node",
            buckets=list(zip(bounds, cumulative, strict=True)),
            sum_value=self._latency_sum,
        )
