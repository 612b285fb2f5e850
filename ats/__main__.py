"""`python -m ats ...` is the same as `ats ...` (the command line in `ats.cli`)."""
from __future__ import annotations

import sys

from ats.cli import main

sys.exit(main())
