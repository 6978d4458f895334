"""``python -m mbostream_client``: the ``mbostream-client`` command."""

import sys

from mbostream_client.cli import main

sys.exit(main())
