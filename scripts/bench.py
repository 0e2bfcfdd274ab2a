#!/usr/bin/env python3
"""zrsd benchmark (`make bench`): the package tests/bench/."""
import os
import sys

# First on the path: this script's directory holds a `bench` module too.
sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', 'tests'))
from bench import main  # noqa: E402

if __name__ == '__main__':
    sys.exit(main())
