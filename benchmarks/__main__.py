"""``python -m benchmarks``: the command line (benchmarks.cli)."""

from benchmarks.cli import main

if __name__ == "__main__":  # not when a --jobs worker process (spawned) imports this module
    raise SystemExit(main())
