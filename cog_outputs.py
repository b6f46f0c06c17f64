"""Where the predictor writes a prediction's output images, and how those folders go away with their process.

Each prediction writes into a new folder ``<tempdir>/pnp-outputs-<pid>-XXXXXXXX``, where ``pid``
is the worker process that owns it. The predictor removes a folder when the next prediction
starts (Cog has encoded or uploaded the outputs by then). What outlives the worker is removed:

- when the worker ends, however it ends (a stopped server, SIGTERM, Ctrl-C, kill -9, the kernel's
  out-of-memory killer), by a small watcher process that ``remove_when_this_process_ends`` starts:
  it waits for the end of a pipe that only the worker holds, which the kernel closes with it;
- at setup, by ``remove_stale_output_folders``, for folders whose watcher did not run (it was
  killed too): those whose owner no longer runs. A folder of a live process, such as another
  server sharing the temporary folder, is left alone.

Python's own exit hooks are not enough: coglet's worker spends its life in Rust code, and a
group SIGTERM or SIGINT ends it without running them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile

PREFIX = "pnp-outputs-"
_OWNED = re.compile(rf"{re.escape(PREFIX)}(?P<pid>\d+)-")
# The watcher: waits until every writer of its stdin is gone, then removes the owner's folders.
_WATCHER = """
import os, shutil, sys
sys.stdin.buffer.read()
folder, prefix = sys.argv[1:]
for name in os.listdir(folder):
    if name.startswith(prefix):
        shutil.rmtree(os.path.join(folder, name), ignore_errors=True)
"""


def new_output_folder() -> str:
    """A new, empty output folder in the temporary folder, owned by this process."""
    return tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-")


def remove_stale_output_folders(folder: str | None = None) -> list[str]:
    """Remove the output folders (in ``folder``, default the temporary folder) whose owner no longer runs.

    Folders under this process's own id are stale too: it has made none yet when setup calls
    this, so they belong to an earlier process that had the same id. Returns the removed names.
    """
    folder = folder or tempfile.gettempdir()
    removed = []
    for entry in os.scandir(folder):
        owner = _OWNED.match(entry.name)
        if owner and entry.is_dir(follow_symlinks=False):
            pid = int(owner["pid"])
            if pid == os.getpid() or not _running(pid):
                shutil.rmtree(entry.path, ignore_errors=True)
                removed.append(entry.name)
    return removed


def remove_when_this_process_ends() -> int:
    """Start the watcher that removes this process's output folders once the process has ended; returns its pid.

    The write end of the watcher's pipe stays open, unused and not inherited by child
    processes, for as long as this process lives. The watcher runs in its own session, so that
    the signal which stops the server's process group leaves it to do its work.
    """
    read, write = os.pipe()  # neither end is inherited by processes started later (PEP 446)
    watcher = subprocess.Popen(
        [sys.executable, "-I", "-c", _WATCHER, tempfile.gettempdir(), f"{PREFIX}{os.getpid()}-"],
        stdin=read,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    os.close(read)  # ``write`` is never closed: the kernel closes it when this process ends
    return watcher.pid


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
