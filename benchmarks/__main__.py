"""`python -m benchmarks [options]`: the same as `malm bench [options]` (see `malm bench --help`)."""

from __future__ import annotations

import sys

from malm.cli import main

if __name__ == "__main__":
    sys.argv = ["malm", "bench", *sys.argv[1:]]
    main()
