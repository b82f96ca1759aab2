"""`python -m emofast` (and `torchrun ... -m emofast`) is the `emofast` command."""
import sys

from .cli import main

sys.exit(main())
