"""`python -m benchmarks.paper`: see the package's docstring (`--help`)."""

from benchmarks.paper.cli import main

main()
