"""``python -m img2pose_core.cli ARGS``: the ``img2pose`` command without the console script."""

import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
