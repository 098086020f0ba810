"""`python -m homing`: the `homing` command (SMTP worker processes are started this way)."""

import sys

from homing.cli.main import main

sys.exit(main())
