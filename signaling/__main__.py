"""`python -m signaling` is the `tern` command."""
import sys

from .cli import main

sys.exit(main())
