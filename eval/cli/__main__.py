"""`python -m lowbit.eval.cli ...`: the `lowbit` command."""
import sys

from lowbit.eval.cli import main

sys.exit(main())
