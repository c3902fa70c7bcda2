"""Thin entry point, same as the `triforce` console script: `python experiments/run.py [overrides]`."""

from triforce.cli import main

if __name__ == "__main__":
    main()
