"""Running the command line as a user does: ``python -m pnp ...`` in a subprocess, offline."""

import os
import subprocess
import sys

from support.paths import ROOT

# The tiny random model at its own size, in float32: seconds per run.
FAST = ["--model", "tiny", "--steps", "3", "--resolution", "128", "--dtype", "float32"]


def run_cli(*args, cwd=ROOT, env=None, timeout=300):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "pnp", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout
    )
