"""``python -m recsim_post``: the same as the ``recsim-post`` command."""

import sys

from .cli import main

sys.exit(main())
