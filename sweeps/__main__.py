"""`python -m sweeps COMMAND ...`: the `sweeps` command (`sweeps.console`), for an environment
whose scripts folder is not on PATH."""

import sys

from sweeps.console import main

if __name__ == "__main__":
    sys.exit(main())
