"""The reproduction harness: paper tables as grids of runs, a results store, reports, a CLI.

Entry point: ``python -m benchmarks {reproduce,report,merge,list}`` (see ``benchmarks.cli``).
Nothing is imported here so that ``list`` and ``report`` never load torch.
"""
