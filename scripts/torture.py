#!/usr/bin/env python
"""The zrsd torture suite, the package tests/torture/ (`--help`)."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', 'tests'))
from torture.run import main  # noqa: E402

if __name__ == '__main__':
    sys.exit(main())
