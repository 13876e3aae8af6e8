"""The idle measurement's plan: pairs, shares per load generator, source addresses, and
the Redis figures taken from two ``INFO`` readings."""

import pytest
from busbench.idle import IdlePlan, command_calls, redis_figures
from busbench.loadgen import idle_name, source_address


def plan(count: int, per_loadgen: int = 20000, per_addr: int = 20000) -> IdlePlan:
    return IdlePlan(
        count=count,
        ping=20.0,
        window=20.0,
        hold=0.0,
        per_loadgen=per_loadgen,
        per_addr=per_addr,
        compression="deflate",
    )


def test_sockets_are_pairs_watching_each_other() -> None:
    assert idle_name(0, "x0") == ("idleA0x0", "idleB0x0")
    assert idle_name(1, "x0") == ("idleB0x0", "idleA0x0")
    assert idle_name(7, "") == ("idleB3", "idleA3")


@pytest.mark.parametrize(
    ("count", "per_loadgen", "sizes"),
    [
        (2000, 20000, [2000]),
        (100000, 20000, [20000] * 5),
        (100000, 19744, [16668, 16668] + [16666] * 4),
        (10, 4, [4, 4, 2]),
        (6, 4, [4, 2]),
    ],
)
def test_shares_split_whole_pairs_and_cover_every_socket(
    count: int, per_loadgen: int, sizes: list[int]
) -> None:
    shares = plan(count, per_loadgen).shares()
    assert [n for _, n in shares] == sizes
    assert all(n % 2 == 0 for _, n in shares)
    firsts = [first for first, _ in shares]
    assert firsts == [sum(sizes[:k]) for k in range(len(sizes))]


def test_source_addresses_spread_over_loopback() -> None:
    assert plan(100000).addresses() == [f"127.0.0.{k}" for k in range(1, 6)]
    assert plan(2000).addresses() == ["127.0.0.1"]
    assert source_address(0, 20000) == "127.0.0.1"
    assert source_address(19999, 20000) == "127.0.0.1"
    assert source_address(20000, 20000) == "127.0.0.2"
    with pytest.raises(ValueError):
        source_address(254 * 10, 10)


def test_redis_figures_leave_out_the_bench_info() -> None:
    before = {
        "total_commands_processed": "1000",
        "used_cpu_sys": "1.5",
        "used_cpu_user": "2.0",
        "cmdstat_info": "calls=3,usec=10,usec_per_call=3.3",
        "cmdstat_set": "calls=100,usec=10,usec_per_call=0.1",
    }
    after = {
        "total_commands_processed": "1151",
        "used_cpu_sys": "1.6",
        "used_cpu_user": "2.2",
        "cmdstat_info": "calls=4,usec=10,usec_per_call=3.3",
        "cmdstat_set": "calls=250,usec=10,usec_per_call=0.1",
        "db0": "keys=4,expires=4,avg_ttl=7000",
        "connected_clients": "5",
    }
    assert command_calls(after) == {"info": 4, "set": 250}
    fig = redis_figures(before, after, ours=1)
    assert fig["commands"] == 150
    assert fig["by_command"] == {"set": 150}
    assert fig["cpu_s"] == pytest.approx(0.3)
    assert fig["keys_after"] == "keys=4,expires=4,avg_ttl=7000"
