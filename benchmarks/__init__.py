"""The reproduction harness: paper tables as grids of runs, a results store, reports, a CLI.

Entry point: ``python -m benchmarks {reproduce,report,merge,list}`` (see ``benchmarks.cli``).
Nothing heavy is imported here so that ``list`` and ``report`` never load torch, and importing
the package changes nothing: the CPU numerics are pinned by an explicit
``benchmarks.execution.numerics.pin()`` where a process starts (``cli.main``, ``tests/conftest.py``,
``benchmarks/perf/conftest.py``, the nox sessions' environment).
"""
