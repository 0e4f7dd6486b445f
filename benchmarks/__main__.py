"""python -m benchmarks: see benchmarks/runner.py and `python -m benchmarks --help`."""
from .runner import main

if __name__ == "__main__":
    main()
