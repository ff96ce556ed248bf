"""``python -m natten_profiler``: the same command line as ``natten-profiler``."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
