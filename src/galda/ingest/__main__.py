"""``python -m galda.ingest`` (also the ``galda-ingest`` script)."""

import sys

from galda.ingest.cli import main

if __name__ == "__main__":
    sys.exit(main())
