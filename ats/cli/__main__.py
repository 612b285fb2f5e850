"""`python -m ats.cli ...` is the same as `ats ...`."""
import sys

from ats.cli import main

sys.exit(main())
