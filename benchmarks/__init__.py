"""The reproduction harness: paper tables as grids of runs, a results store, reports, a CLI.

Entry point: ``python -m benchmarks {reproduce,report,merge,list}`` (see ``benchmarks.cli``).
Nothing heavy is imported here so that ``list`` and ``report`` never load torch. Importing the
package pins the CPU numerics (``benchmarks.execution.numerics``) before torch's first op, for this
process and the ``--jobs`` workers it starts; ``EGMF_NUMERICS=native`` opts out.
"""

from benchmarks.execution import numerics as _numerics

try:
    _numerics.pin()
except _numerics.NumericsError:
    pass  # a bad $EGMF_NUMERICS: the CLIs report it as bad input (exit 2) before any run
