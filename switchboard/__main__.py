"""``python -m switchboard``: the files command line (switchboard/cli.py)."""

import sys

from switchboard.cli import main

sys.exit(main())
