"""`python -m fnbody` runs the command line."""

import sys

from fnbody.cli import main

if __name__ == "__main__":
    sys.exit(main())
