"""``pnp batch`` on the local backend: outputs, records and results.csv, URLs, resuming, and what is refused.

The command runs in-process through ``pnp.app.cli.main`` (the same code as ``python -m pnp``).
"""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from pnp.app.cli import flag, main
from pnp.batch.manifest import read_manifest
from pnp.batch.run import NO_RESULT, BatchPlan, run
from pnp.evaluation.backends import Translation
from pnp.outputs import OutputOptions
from support.local_http import LocalServer, QuietHandler

FAST = ["--steps", "2", "--resolution", "128", "--dtype", "float32", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    y, x = np.mgrid[0:128, 0:160]
    pixels = np.stack([x * 255 / 159, y * 255 / 127, np.full_like(x, 90.0)], axis=-1).astype(np.uint8)
    Image.fromarray(pixels).save(folder / "a.png")
    Image.fromarray(pixels[::-1].copy()).save(folder / "b.png")
    return folder


@pytest.fixture(scope="module")
def server(photos):
    """Serves the photos over HTTP, as a manifest's URLs name them."""

    class Photos(QuietHandler):
        def do_GET(self):
            path = photos / self.path.lstrip("/")
            if path.is_file():
                self.send_body(path.read_bytes(), content_type="image/png")
            else:
                self.send_body(b"gone", status=404)

    served = LocalServer(Photos)
    yield served
    served.stop()


def batch(manifest, out, *extra, model):
    return main(["batch", str(manifest), "--out", str(out), "--model", str(model), *FAST, *extra])


def results(out):
    with (out / "results.csv").open() as file:
        return list(csv.DictReader(file))


def test_a_job_writes_outputs_records_and_results_and_resumes(photos, server, tiny_model_dir, tmp_path, capsys):
    manifest = tmp_path / "job.jsonl"
    rows = [
        {"id": "a", "image": str(photos / "a.png")},
        {"id": "web", "image": f"{server.url}/b.png", "scale": 7.5},
        {"id": "gone", "image": f"{server.url}/missing.png"},
        {"id": "gen", "generation-prompt": "a house", "seed": 5, "prompt": "a castle"},
    ]
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "out"
    assert batch(manifest, out, "--prompt", "a cat", "--prompt", "a dog", "--format", "jpg", model=tiny_model_dir) == 1
    assert "3 of 4 rows translated (0 earlier), 1 failed" in capsys.readouterr().out
    assert sorted(p.relative_to(out).as_posix() for p in (out / "images").rglob("*.*")) == [
        "images/a/00-a-cat.jpg",
        "images/a/01-a-dog.jpg",
        "images/gen/00-source.jpg",
        "images/gen/01-a-castle.jpg",
        "images/web/00-a-cat.jpg",
        "images/web/01-a-dog.jpg",
    ]
    lines = results(out)
    assert [(line["id"], line["prompt"], line["output"]) for line in lines] == [
        ("a", "a cat", "images/a/00-a-cat.jpg"),
        ("a", "a dog", "images/a/01-a-dog.jpg"),
        ("web", "a cat", "images/web/00-a-cat.jpg"),
        ("web", "a dog", "images/web/01-a-dog.jpg"),
        ("gone", "", ""),
        ("gen", "a castle", "images/gen/01-a-castle.jpg"),
    ]
    assert [line["scale"] for line in lines] == ["10.0", "10.0", "7.5", "7.5", "", "10.0"]
    assert "could not fetch" in lines[4]["error"] and "404" in lines[4]["error"]
    assert lines[5]["seed"] == "5" and lines[5]["generation-prompt"] == "a house"

    # Rerun with one row changed: only it (and the failed row) are translated again.
    kept = {name: (out / "images" / name).stat().st_mtime_ns for name in ("a/00-a-cat.jpg", "gen/01-a-castle.jpg")}
    rows[1]["scale"] = 5.0
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert batch(manifest, out, "--prompt", "a cat", "--prompt", "a dog", "--format", "jpg", model=tiny_model_dir) == 1
    captured = capsys.readouterr()
    assert "reusing 2 finished rows" in captured.err and "3 of 4 rows translated (2 earlier)" in captured.out
    assert {name: (out / "images" / name).stat().st_mtime_ns for name in kept} == kept
    assert [line["scale"] for line in results(out)][2:4] == ["5.0", "5.0"]


@pytest.mark.parametrize(
    "manifest_text, extra, message",
    [
        (
            "image,prompt\na.png,a cat\n",
            ["--backend", "http://127.0.0.1:9"],
            "error: --backend: 'http://127.0.0.1:9': a batch job runs on local or ray",
        ),
        ("image,prompt,stpes\na.png,a cat,3\n", [], "error: MANIFEST: "),
        ("image,prompt\na.png,a cat\n", ["--steps", "0"], "error: --steps: 0 is out of range"),
        ("image,prompt\na.png,a cat\n", ["--backend", "ray:nowhere"], "error: --backend: 'ray:nowhere' is not a Ray"),
        (
            "image,prompt\na.png,a cat\n",
            ["--backend", "ray:127.0.0.1:9"],
            "error: --backend: no Ray cluster answers at ",
        ),
    ],
)
def test_bad_input_is_refused_before_any_work(tmp_path, manifest_text, extra, message, capsys):
    (tmp_path / "m.csv").write_text(manifest_text)
    assert main(["batch", str(tmp_path / "m.csv"), "--out", str(tmp_path / "out"), "--model", "tiny", *extra]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(message)
    assert not (tmp_path / "out").exists()


def test_a_folder_holding_another_job_is_refused(photos, tiny_model_dir, tmp_path, capsys):
    (tmp_path / "m.csv").write_text(f"image,prompt\n{photos / 'a.png'},a cat\n")
    assert batch(tmp_path / "m.csv", tmp_path / "out", model=tiny_model_dir) == 0
    assert batch(tmp_path / "m.csv", tmp_path / "out", "--format", "webp", model=tiny_model_dir) == 2
    assert "holds a batch job with other format ('png', now 'webp')" in capsys.readouterr().err


def test_a_row_the_backend_never_returns_is_recorded_as_failed_and_redone(tmp_path):
    """A backend that ends without one row's result (a bug, a lost reply): the row is failed, not lost."""
    (tmp_path / "m.csv").write_text("id,image,prompt\nkept,a.png,a cat\nlost,b.png,a dog\n")
    rows = tuple(read_manifest(tmp_path / "m.csv", {}, flag))
    plan = BatchPlan(rows, tmp_path / "out", {"kind": "batch"}, OutputOptions())

    class Forgetful:
        def __init__(self):
            self.asked = []

        def translate(self, jobs):
            jobs = list(jobs)
            self.asked.append([job.source.key for job in jobs])
            yield Translation(jobs[0], [Image.new("RGB", (8, 8))], None, "test")

    backend = Forgetful()
    summary = run(plan, backend, quiet=True, log=lambda line: None)
    assert (summary["rows"], summary["failed"]) == (2, 1)
    assert [(line["id"], line["output"], line["error"]) for line in results(tmp_path / "out")] == [
        ("kept", "images/kept/00-a-cat.png", ""),
        ("lost", "", NO_RESULT),
    ]
    run(plan, backend, quiet=True, log=lambda line: None)
    assert backend.asked == [["kept", "lost"], ["lost"]]


def test_without_ray_installed_the_ray_backend_says_how_to_get_it(tmp_path):
    """Ray is optional (requirements-scale.txt; not in the Cog image): without it, one line says what to install."""
    (tmp_path / "m.csv").write_text("image,prompt\na.png,a cat\n")
    argv = ["pnp", "batch", "m.csv", "--out", "out", "--model", "tiny", "--backend", "ray"]
    blocked = "import sys, runpy; sys.modules['ray'] = None"  # as if not installed: importing it raises
    probe = f"{blocked}; sys.argv = {argv!r}; runpy.run_module('pnp', run_name='__main__')"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == "error: --backend: the Ray backend needs Ray: pip install -r requirements-scale.txt"
    assert not (tmp_path / "out").exists()
