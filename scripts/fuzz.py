#!/usr/bin/env python3
"""Fuzz zrsd's replication protocol: the command line of the fuzzer, the
package tests/fuzz (see its docstring; ``--help`` for the options)."""
import os
import sys

# First on the path: tests/fuzz, not this script, is the package `fuzz`.
sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', 'tests'))
from fuzz.run import main  # noqa: E402

if __name__ == '__main__':
    sys.exit(main())
