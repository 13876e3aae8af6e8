"""The per-message benchmarks' shared timing: variants alternate within every round,
and each gets the median of its rounds."""

from collections.abc import Callable

from busbench.pathbench import alternated


def test_variants_alternate_and_each_gets_its_median() -> None:
    order: list[str] = []
    values = {"a": iter([5.0, 1.0, 3.0]), "b": iter([2.0, 9.0, 4.0])}

    def run(key: str) -> Callable[[int], float]:
        def one(iterations: int) -> float:
            assert iterations == 100
            order.append(key)
            return next(values[key])

        return one

    medians = alternated({"a": run("a"), "b": run("b")}, repeat=3, iterations=100)
    assert order == ["a", "b", "a", "b", "a", "b"]
    assert medians == {"a": 3.0, "b": 4.0}
