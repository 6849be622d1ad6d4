"""`python -m niodoo_supervisor` is the `niodoo-supervisor` command."""

import sys

from niodoo_supervisor.cli.main import main

sys.exit(main())
