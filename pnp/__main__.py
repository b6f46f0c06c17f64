import sys

from pnp.app.cli import main

sys.exit(main())
