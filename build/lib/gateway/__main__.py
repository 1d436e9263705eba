"""Lets `python -m gateway` work exactly like the `gateway` console script."""

import sys

from gateway.cli import main

sys.exit(main())
