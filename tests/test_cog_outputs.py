"""The predictor's output folders go away with the process that owns them, and only theirs do
(tests/test_cog_server.py checks the same with the real server: stopped, and its worker killed)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cog_outputs import PREFIX, remove_stale_output_folders

ROOT = Path(__file__).resolve().parents[1]


def ended_pid() -> int:
    """The id of a process that has ended (and been reaped)."""
    return int(
        subprocess.run(
            [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
        ).stdout
    )


def test_folders_of_ended_processes_are_removed_and_no_others(tmp_path):
    live = subprocess.Popen(["sleep", "60"])  # another server's worker, say
    try:
        dead = ended_pid()
        folders = [
            f"{PREFIX}{dead}-abcd1234",
            f"{PREFIX}{live.pid}-abcd1234",
            f"{PREFIX}{os.getpid()}-abcd1234",
            f"{PREFIX}k9nnybd8",  # an older version's name: no owner to ask, so kept
            "pnp-outputs",
            "other",
        ]
        for name in folders:
            (tmp_path / name).mkdir()
            (tmp_path / name / "00-a-cat.png").write_bytes(b"png")
        (tmp_path / f"{PREFIX}{dead}-file").write_bytes(b"not a folder")
        removed = remove_stale_output_folders(str(tmp_path))
    finally:
        live.kill()
        live.wait()
    # This process's own: setup runs before it has made any, so they are an earlier process's with the same id.
    assert sorted(removed) == sorted([f"{PREFIX}{dead}-abcd1234", f"{PREFIX}{os.getpid()}-abcd1234"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"{PREFIX}{live.pid}-abcd1234", f"{PREFIX}k9nnybd8", "pnp-outputs", "other", f"{PREFIX}{dead}-file"]
    )


OWNER = """
import sys
from cog_outputs import new_output_folder, remove_when_this_process_ends
remove_when_this_process_ends()
print(new_output_folder(), new_output_folder(), flush=True)
sys.stdin.read()
"""


@pytest.mark.parametrize("ending", ["SIGKILL", "SIGTERM", "exit"])
def test_the_watcher_removes_a_process_folders_when_it_ends(tmp_path, ending):
    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )
    folders = [Path(name) for name in owner.stdout.readline().split()]
    other = tmp_path / f"{PREFIX}{os.getpid()}-abcd1234"  # another process's
    other.mkdir()
    assert len(folders) == 2 and all(f.is_dir() and f.parent == tmp_path for f in folders)
    time.sleep(0.5)
    assert all(f.is_dir() for f in folders)  # the watcher waits while the owner lives
    if ending == "exit":
        owner.stdin.close()
    else:
        owner.send_signal(getattr(signal, ending))
    owner.wait(timeout=30)
    deadline = time.monotonic() + 30
    while any(f.exists() for f in folders) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(f.exists() for f in folders)
    assert other.is_dir()
