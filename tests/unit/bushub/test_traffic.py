"""The hot-path metrics export exactly what prometheus-client's own types would."""

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from bushub.metrics import LATENCY_BUCKETS, Metrics
from bushub.traffic import Traffic

LATENCIES = st.lists(
    st.one_of(
        st.sampled_from(LATENCY_BUCKETS),  # exactly on a bound: counts in that bucket
        st.floats(min_value=0.0, max_value=10.0, allow_nan=False),
    ),
    max_size=50,
)


def _reference(latencies: list[float]) -> bytes:
    registry = CollectorRegistry()
    histogram = Histogram(
        "bushub_relay_latency_seconds",
        "From receive on the publishing node to send on the delivering node",
        buckets=LATENCY_BUCKETS,
        registry=registry,
    )
    for seconds in latencies:
        histogram.observe(seconds)
    return generate_latest(registry)


def _ours(latencies: list[float]) -> bytes:
    registry = CollectorRegistry()
    traffic = Traffic(LATENCY_BUCKETS)
    for seconds in latencies:
        traffic.observe_latency(seconds)
    registry.register(traffic)
    text = generate_latest(registry).decode()
    return "".join(line + "\n" for line in text.splitlines() if "relay_latency" in line).encode()


@given(LATENCIES)
def test_latency_histogram_matches_prometheus_histogram(latencies: list[float]) -> None:
    reference = _reference(latencies).decode()
    reference = "".join(
        line + "\n"
        for line in reference.splitlines()
        if "relay_latency" in line and "_created" not in line
    )
    assert _ours(latencies).decode() == reference


def test_counters_have_the_contract_names_and_labels() -> None:
    metrics = Metrics()
    traffic = metrics.traffic
    traffic.received["json"] += 3
    traffic.received["msgpack"] += 1
    traffic.delivered["msgpack"] += 2
    traffic.bytes_received += 700
    traffic.bytes_sent += 500
    sample = metrics.registry.get_sample_value
    assert sample("bushub_messages_received_total", {"format": "json"}) == 3
    assert sample("bushub_messages_received_total", {"format": "msgpack"}) == 1
    assert sample("bushub_messages_delivered_total", {"format": "json"}) == 0
    assert sample("bushub_messages_delivered_total", {"format": "msgpack"}) == 2
    assert sample("bushub_bytes_received_total", {}) == 700
    assert sample("bushub_bytes_sent_total", {}) == 500
    # The same TYPE lines a prometheus Counter would give.
    registry = CollectorRegistry()
    Counter("bushub_bytes_sent", "Frame bytes sent to clients", registry=registry)
    text = metrics.render().decode()
    for line in generate_latest(registry).decode().splitlines():
        if line.startswith("# TYPE"):
            assert line in text
