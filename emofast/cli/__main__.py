"""`python -m emofast.cli` is the `emofast` command."""
import sys

from . import main

sys.exit(main())
