"""``python -m recsim_post``: the same as the ``recsim-post`` command."""

import sys

from .cli import main

if __name__ == "__main__":  # a tool that imports every module of the package must not run the CLI
    sys.exit(main())
