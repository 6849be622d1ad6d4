"""`python -m niodoo_supervisor` is the `niodoo-supervisor` command."""

import sys

from .cli import main

sys.exit(main())
