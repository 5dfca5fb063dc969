"""The ``--engine`` options ``safeclip reindex`` and ``safeclip embed`` share."""

from __future__ import annotations

import click

ENGINES = ("local", "ray")


def engine_options(function):
    """``--engine local|ray``, ``--workers N``, ``--gpus-per-worker G``, ``--cpus-per-worker C``,
    ``--ray-address ADDR``."""
    options = [
        click.option("--engine", type=click.Choice(ENGINES), default="local", show_default=True,
                     help="local: this process; ray: a Ray actor pool, one Encoder per actor (pip install "
                          "'safeclip[ray]')."),
        click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
                     help="With --engine ray: actors in the pool."),
        click.option("--gpus-per-worker", type=click.FloatRange(min=0), default=0, show_default=True,
                     help="With --engine ray: GPUs each actor gets (0: embed on CPUs)."),
        click.option("--cpus-per-worker", type=click.FloatRange(min=0, min_open=True), default=1, show_default=True,
                     help="With --engine ray: CPUs each actor gets; whole CPUs are its torch threads."),
        click.option("--ray-address", metavar="ADDR", default=None,
                     help="With --engine ray: the cluster to join (default: RAY_ADDRESS, or a local Ray)."),
    ]
    for option in reversed(options):
        function = option(function)
    return function
