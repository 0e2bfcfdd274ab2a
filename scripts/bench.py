#!/usr/bin/env python3
"""zrsd benchmark: `make bench`; the package is tests/bench/ (README.md,
"Benchmark")."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# First on the path: this script's directory holds a `bench` module too.
sys.path.insert(0, os.path.join(ROOT, 'tests'))

from bench import main  # noqa: E402

if __name__ == '__main__':
    sys.exit(main())
