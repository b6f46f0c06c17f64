import os
import sys

# Read by transformers at import time; it otherwise warns about optional image backends we never use.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from .cli import main  # noqa: E402

sys.exit(main())
