"""A Redis Cluster URL may name several seed nodes (``bushub.broker.cluster.split_seeds``)."""

import pytest

from bushub.broker.cluster import split_seeds


@pytest.mark.parametrize(
    ("url", "first", "others"),
    [
        ("redis://h:7000", "redis://h:7000", []),
        ("redis://h1:7000,h2:7001", "redis://h1:7000", [("h2", 7001)]),
        # The login (an @ in the password too) and the path stay with the first.
        ("redis://u:p@ss@h1:1,h2:2/0?a=b", "redis://u:p@ss@h1:1/0?a=b", [("h2", 2)]),
        ("redis://h1:1,[::1]:2,h3", "redis://h1:1", [("::1", 2), ("h3", 6379)]),
    ],
)
def test_the_first_seed_is_the_url_and_the_rest_are_startup_nodes(
    url: str, first: str, others: list[tuple[str, int]]
) -> None:
    got, nodes = split_seeds(url)
    assert got == first
    assert [(n.host, n.port) for n in nodes] == others
