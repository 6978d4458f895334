"""Edge entry room: ``python -m mbostream.edge`` runs :func:`mbostream.edge.cli.main`."""

import sys

from mbostream.edge.cli import main

if __name__ == "__main__":
    sys.exit(main())
