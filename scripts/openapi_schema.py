"""Write the OpenAPI schema of predict.py to .cog/openapi_schema.json, as `cog build` bakes it into the image.

The Cog HTTP server (coglet) validates inputs and serves /openapi.json only from that file. cog
0.23's Python SDK cannot write it (`cog build` does, with the Go command-line tool, which needs
Docker); cog 0.19.3 is the last release whose Python SDK has the generator, and its output has
the same form. The dev set-up installs it, without dependencies, into .cog/cog-0.19.3/:

    pip install --no-deps --target .cog/cog-0.19.3 cog==0.19.3

and this script puts it in front of the installed cog only for the generator's own process.

    python scripts/openapi_schema.py [--project DIR] [--out FILE]

Needs the project's virtual environment (the generator imports predict.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from pnp.outputs import write_atomic

GENERATOR_VERSION = "0.19.3"
ROOT = Path(__file__).resolve().parent.parent


def generator_sdk(folder: Path) -> Path:
    """The folder holding cog 0.19.3's Python SDK; SystemExit saying how to install it if it is not there."""
    if not (folder / "cog" / "command" / "openapi_schema.py").is_file():
        raise SystemExit(
            f"cog {GENERATOR_VERSION}'s schema generator is not in {folder}; install it with "
            f"`pip install --no-deps --target {folder} cog=={GENERATOR_VERSION}` (README, Test)"
        )
    return folder


def generate_schema(project: Path, sdk: Path) -> dict:
    """Run the generator in ``project`` (it reads cog.yaml and imports the predictor) and return the schema."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(sdk), str(project), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run(
        [sys.executable, "-m", "cog.command.openapi_schema"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"schema generation failed in {project}:\n{done.stderr.strip()}")
    return json.loads(done.stdout)


def write_schema(schema: dict, out: Path) -> Path:
    """Write the schema whole or not at all."""
    return write_atomic(out, json.dumps(schema, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", type=Path, default=ROOT, help="folder with cog.yaml and predict.py")
    parser.add_argument("--out", type=Path, help="schema file (default: PROJECT/.cog/openapi_schema.json)")
    parser.add_argument(
        "--sdk",
        type=Path,
        default=ROOT / ".cog" / f"cog-{GENERATOR_VERSION}",
        help="where cog's schema generator is installed",
    )
    args = parser.parse_args(argv)
    project = args.project.resolve()
    schema = generate_schema(project, generator_sdk(args.sdk))
    print(write_schema(schema, args.out or project / ".cog" / "openapi_schema.json"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
