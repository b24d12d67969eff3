"""``python -m streamrec``: the same command line as the ``streamrec`` script."""

import sys

from streamrec.streams.cli import main

if __name__ == "__main__":
    sys.exit(main())
