"""`python -m llamacpu.cli ...` runs the `llamacpu` command."""
import sys

from . import main

sys.exit(main())
