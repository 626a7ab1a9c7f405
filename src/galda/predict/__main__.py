"""``python -m galda.predict``."""

import sys

from galda.predict.cli import main

if __name__ == "__main__":
    sys.exit(main())
