#!/usr/bin/env python
"""The failover drill (`make drill`): the module tests/drill.py."""
import os
import sys

# First on the path: this script's directory holds a `drill` module too.
sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', 'tests'))
from drill import main  # noqa: E402

if __name__ == '__main__':
    sys.exit(main())
