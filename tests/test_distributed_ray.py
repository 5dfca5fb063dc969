"""``distributed_ray.streamed`` on a local Ray with two CPUs: one pool of actors for a whole stream,
results in the order of the input, and the input read only a few items ahead of the results."""

from __future__ import annotations

import os

import pytest

from tests.ray_world import local_ray  # noqa: F401 - the session's Ray

pytest.importorskip("ray")


def test_one_pool_serves_the_whole_stream_in_order_and_reads_ahead_a_bounded_amount(local_ray):
    from safeclip_sdk.runtime import ray_pool as dray

    class Squarer:  # defined here so that Ray ships it by value to its workers
        """Answers with its process id, so the test can count the actors that did the work."""

        def __call__(self, value: int) -> tuple[int, int]:
            return os.getpid(), value * value

    read: list[int] = []

    def items():
        for number in range(40):
            read.append(number)
            yield f"item {number}", number

    results, ahead = [], []
    for item, (pid, square) in dray.streamed(Squarer, (), items(), workers=2, gpus_per_worker=0):
        ahead.append(len(read) - len(results))
        results.append((item, pid, square))

    assert [(item, square) for item, _, square in results] == [(f"item {n}", n * n) for n in range(40)]
    assert len({pid for _, pid, _ in results}) == 2 and os.getpid() not in {pid for _, pid, _ in results}
    assert max(ahead) == 4  # two in flight per actor: never the whole input at once


def test_a_safeclip_error_in_an_actor_reaches_the_caller_as_its_one_line(local_ray):
    from safeclip_sdk.runtime import ray_pool as dray
    from safeclip_sdk.errors import SafeclipError

    class Failing:
        def __call__(self, value: int) -> int:
            raise SafeclipError(f"item {value}: cannot be embedded")

    with pytest.raises(Exception) as raised:
        list(dray.streamed(Failing, (), [("a", 1), ("b", 2)], workers=1, gpus_per_worker=0))
    error = dray.unwrap(raised.value)
    assert isinstance(error, SafeclipError) and str(error) == "item 1: cannot be embedded"


def test_an_actor_gets_as_many_torch_threads_as_its_cpus(local_ray):
    from safeclip_sdk.runtime import ray_pool as dray

    class Threads:
        def __call__(self, value: int) -> int:
            import torch

            return torch.get_num_threads()

    for cpus in (1, 2):
        [(_, threads)] = list(dray.streamed(Threads, (), [("a", 0)], workers=1, gpus_per_worker=0,
                                            cpus_per_worker=cpus))
        assert threads == cpus


def test_a_pool_larger_than_the_cluster_fails_at_once_with_the_cpus_it_needs(local_ray):
    from safeclip_sdk.runtime import ray_pool as dray
    from safeclip_sdk.errors import SafeclipError

    with pytest.raises(SafeclipError, match=r"2 worker\(s\) with 1.5 CPU\(s\) each need 3 CPU\(s\), but .* has 2"):
        dray.connect(None, 2, 0, progress=False, cpus_per_worker=1.5)
    with pytest.raises(SafeclipError, match="cpus per worker must be more than 0"):
        dray.check_engine("ray", 1, 0, cpus_per_worker=0)
