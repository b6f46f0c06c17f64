"""``pnp batch`` and ``pnp evaluate`` with ``--backend ray``, on a real local Ray cluster started for this module.

The cluster (two CPUs, no dashboard, its own temporary folder) starts once and is shut down at
the end of the module whatever happened; it is this process's own (``address="local"``), so a
second pytest process or another cluster on the machine is never joined. The main job runs as a
user runs it on a head node: ``python -m pnp batch ... --backend ray:HOST:PORT`` in a process of
its own, joining the cluster by its GCS address. The other commands run in-process through
``pnp.app.cli.main``; their Ray backend finds the cluster already joined and leaves it running.
Every actor loads the tiny model from the same folder as the local runs, and runs torch with one
thread, as this process does: equal weights at equal memory alignment, equal thread counts and
equal calls, so the outputs must be equal bit for bit.
"""

import csv
import json
import logging
import os
import shutil
import signal
import tempfile

import numpy as np
import pytest
from PIL import Image

from pnp.app.cli import main
from pnp.evaluation.ray_backend import RayBackend
from pnp.images import resize_for_model
from support.cli import run_cli
from support.evaluation import near_pie_mask, run_evaluate
from support.paths import SAMPLES

SETTINGS = ["--steps", "2", "--resolution", "128", "--dtype", "float32", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def cluster():
    import ray

    temp = tempfile.mkdtemp(prefix="pnp-ray-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    ray.init(
        address="local",
        num_cpus=2,
        num_gpus=0,
        include_dashboard=False,
        object_store_memory=200 * 2**20,
        logging_level=logging.WARNING,
        _temp_dir=temp,
        _node_ip_address="127.0.0.1",
    )
    try:
        yield ray
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Four small photos with structure, and a file that is not an image."""
    folder = tmp_path_factory.mktemp("photos")
    y, x = np.mgrid[0:128, 0:160]
    base = np.stack([x * 255 / 159, y * 255 / 127, np.full_like(x, 90.0)], axis=-1)
    for k in range(4):
        pixels = np.roll(base, 37 * k, axis=1)
        pixels[20 + 10 * k : 70 + 10 * k, 40:100] = (250, 30 * k, 30)
        Image.fromarray(pixels.astype(np.uint8)).save(folder / f"p{k}.png")
    (folder / "broken.png").write_bytes(b"not an image")
    return folder


def write_manifest(path, rows):
    fields = list(dict.fromkeys(name for row in rows for name in row))
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fields)
        writer.writeheader()
        writer.writerows(rows)
    return path


# Two images sharing prompts and settings (one call), one with its own settings, a generated source,
# an unreadable image and a row with a bad setting.
ROWS = [
    {"id": "p0", "image": "p0.png", "prompt": "a cat; a dog"},
    {"id": "p1", "image": "p1.png", "prompt": "a cat; a dog"},
    {"id": "p2", "image": "p2.png", "prompt": "a bird", "scale": "7.5", "feature-injection-threshold": "0.5"},
    {"id": "gen", "generation-prompt": "a house", "seed": "7", "prompt": "a castle"},
    {"id": "broken", "image": "broken.png", "prompt": "a cat"},
    {"id": "bad", "image": "p3.png", "prompt": "a cat", "scale": "lots"},
]


def batch(manifest, out, model, *extra):
    return main(["batch", str(manifest), "--out", str(out), "--model", str(model), *SETTINGS, *extra])


def outputs(out):
    """Every image a job wrote, by its path in the folder, as pixels."""
    return {p.relative_to(out).as_posix(): np.asarray(Image.open(p)) for p in sorted((out / "images").rglob("*.png"))}


def records(out):
    return {p.stem: json.loads(p.read_text()) for p in (out / "records").iterdir()}


@pytest.fixture(scope="module")
def local_job(images, tiny_model_dir, tmp_path_factory):
    manifest = write_manifest(images / "job.csv", ROWS)
    out = tmp_path_factory.mktemp("local-job")
    assert batch(manifest, out, tiny_model_dir) == 1  # two rows fail
    return manifest, out


@pytest.fixture(scope="module")
def ray_job(cluster, local_job, tiny_model_dir, tmp_path_factory):
    """The local job's manifest on Ray, one actor of one CPU (one torch thread, as here): folder, status, console.

    A second driver, in its own process, joins the cluster by its GCS address (ray:HOST:PORT); it inherits
    RAY_AUTH_MODE=token, which Ray set here when it started the cluster with token authentication.
    """
    manifest, _ = local_job
    out = tmp_path_factory.mktemp("ray-job")
    address = cluster.get_runtime_context().gcs_address
    args = ["batch", str(manifest), "--out", str(out), "--model", str(tiny_model_dir), *SETTINGS]
    done = run_cli(*args, "--backend", f"ray:{address}", "--actors", "1", "--cpus-per-actor", "1")
    return out, done.returncode, done.stdout + done.stderr


def test_the_ray_backend_writes_the_local_backends_outputs_bit_for_bit(ray_job, local_job):
    out, status, console = ray_job
    assert status == 1  # two rows fail, as they do locally
    ours, theirs = outputs(out), outputs(local_job[1])
    assert len(theirs) == 2 + 2 + 1 + 2  # p0, p1, p2, and gen's source and output
    assert ours.keys() == theirs.keys()
    for name in theirs:
        assert np.array_equal(ours[name], theirs[name]), name
    assert all(record["worker"].startswith("ray:") for key, record in records(out).items() if key != "bad")


def test_a_bad_row_is_reported_and_the_others_finish(ray_job):
    out, _, console = ray_job
    assert "4 of 6 rows translated (0 earlier), 2 failed" in console
    assert "row 5 (broken) failed: image: " in console and "broken.png is not a readable image" in console
    assert "row 6 (bad) failed: scale: expected a number, got 'lots'" in console
    assert {key for key, record in records(out).items() if record.get("error")} == {"broken", "bad"}
    with (out / "results.csv").open() as file:
        lines = list(csv.DictReader(file))
    assert [(line["id"], bool(line["output"]), bool(line["error"])) for line in lines] == [
        ("p0", True, False),
        ("p0", True, False),
        ("p1", True, False),
        ("p1", True, False),
        ("p2", True, False),
        ("gen", True, False),
        ("broken", False, True),
        ("bad", False, True),
    ]
    assert all(line["steps"] == "2" for line in lines[:6])
    assert [line["scale"] for line in lines[:6]] == ["10.0"] * 4 + ["7.5", "10.0"]


def test_an_interrupted_job_resumes_and_redoes_only_the_unfinished_rows(
    cluster, images, tiny_model_dir, tmp_path, monkeypatch
):
    manifest = write_manifest(images / "resume.csv", [{"image": f"p{k}.png", "prompt": f"a cat {k}"} for k in range(4)])
    out = tmp_path / "job"
    translate, sent = RayBackend.translate, []

    def interrupted(self, jobs):
        for translation in translate(self, jobs):
            yield translation
            raise KeyboardInterrupt  # as Ctrl-C does, once the first row is filed

    monkeypatch.setattr(RayBackend, "translate", interrupted)
    assert batch(manifest, out, tiny_model_dir, "--backend", "ray", "--images-per-call", "1") == 130
    [first] = records(out).values()
    first_files = {p: p.stat().st_mtime_ns for p in (out / "images").rglob("*.png")}

    def recorded(self, jobs):
        jobs = list(jobs)
        sent.extend(job.source.key for job in jobs)
        return translate(self, jobs)

    monkeypatch.setattr(RayBackend, "translate", recorded)
    assert batch(manifest, out, tiny_model_dir, "--backend", "ray", "--images-per-call", "1") == 0
    assert sorted(sent) == sorted({f"row-0000{k}" for k in range(1, 5)} - {first["key"]})
    assert {p: p.stat().st_mtime_ns for p in first_files} == first_files  # the finished row was not redone
    assert sorted(records(out)) == [f"row-0000{k}" for k in range(1, 5)]


def test_a_killed_actor_loses_no_row(cluster, images, tiny_model_dir, tmp_path, monkeypatch):
    rows = [{"image": f"p{k % 4}.png", "prompt": f"a cat {k}"} for k in range(8)]
    manifest = write_manifest(images / "kill.csv", rows)
    out = tmp_path / "job"
    translate, killed = RayBackend.translate, []

    def killing(self, jobs):
        for translation in translate(self, jobs):
            if not killed:  # the actor that finished the first row still has rows in flight: kill its process
                killed.append(int(translation.worker.rsplit(":", 1)[1]))
                os.kill(killed[0], signal.SIGKILL)
            yield translation

    monkeypatch.setattr(RayBackend, "translate", killing)
    assert batch(manifest, out, tiny_model_dir, "--backend", "ray", "--actors", "2", "--images-per-call", "1") == 0
    found = records(out)
    assert len(found) == 8 and all(len(record["pairs"]) == 1 and not record.get("error") for record in found.values())
    workers = {int(record["worker"].rsplit(":", 1)[1]) for record in found.values()}
    assert killed[0] in workers and len(workers) == 3  # the killed actor's restart finished its rows


def test_actors_that_cannot_load_the_model_stop_the_job_with_one_line(cluster, images, tmp_path, capsys):
    """As when the model's folder is not mounted on the worker nodes: the driver cannot know, the actors fail."""
    manifest = write_manifest(images / "nomodel.csv", [{"image": "p0.png", "prompt": "a cat"}])
    (tmp_path / "empty").mkdir()
    assert batch(manifest, tmp_path / "job", tmp_path / "empty", "--backend", "ray") == 1
    [line] = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert line.startswith("error: the Ray job stopped: an actor could not load the pipeline: ")
    assert f"{tmp_path / 'empty'} is not a complete diffusers" in line and line.endswith("again to resume")
    assert not (tmp_path / "job" / "records").exists() or not any((tmp_path / "job" / "records").iterdir())


@pytest.fixture(scope="module")
def evaluate(tiny_model_dir, clip_model_dir, dino_model_dir):
    def run(out, *extra):
        models = (tiny_model_dir, clip_model_dir, dino_model_dir)
        return run_evaluate(SAMPLES / "pie-bench", out, *models, *SETTINGS, *extra)

    return run


def test_evaluate_on_ray_gives_the_local_results_image_for_image(cluster, evaluate, tmp_path):
    assert evaluate(tmp_path / "local") == 0
    assert evaluate(tmp_path / "ray", "--backend", "ray", "--actors", "2") == 0  # one CPU, one thread each
    local, ray = (json.loads((tmp_path / name / "results.json").read_text())["rows"] for name in ("local", "ray"))
    assert len(local) == 3
    for ours, theirs in zip(ray, local, strict=True):
        assert ours.pop("worker").startswith("ray:") and theirs.pop("worker") == "local"
        assert ours == theirs  # every score and setting
        for image in ("output", "source_image"):
            assert np.array_equal(
                np.asarray(Image.open(tmp_path / "ray" / ours[image])),
                np.asarray(Image.open(tmp_path / "local" / theirs[image])),
            )


# Ray's outputs against the local ones, where a comment cannot promise bits: an actor is another process with its
# own model instance, and on a processor without bf16 units two instances with equal weights can differ in the
# last bits of a float32 (the brief's AMD note). Such a difference moves a pixel's value by far less than one
# 8-bit level before it is rounded, so it flips a channel by at most one level; more is a real difference.
LEVELS = 1


def test_a_masked_batch_job_runs_on_ray_as_it_runs_here(cluster, images, tiny_model_dir, tmp_path):
    mask = np.zeros((128, 160), np.uint8)
    mask[32:96, 50:110] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    rows = [{"id": "masked", "image": str(images / "p0.png"), "mask": str(tmp_path / "mask.png")}]
    rows.append({"id": "plain", "image": str(images / "p1.png")})
    manifest = write_manifest(tmp_path / "masked.csv", rows)
    paste = ["--prompt", "a cat", "--mask-paste", "--mask-feather", "0"]
    assert batch(manifest, tmp_path / "local", tiny_model_dir, *paste) == 0
    assert batch(manifest, tmp_path / "ray", tiny_model_dir, *paste, "--backend", "ray", "--actors", "1") == 0
    found = records(tmp_path / "ray")
    assert all(record["worker"].startswith("ray:") for record in found.values())
    assert found["masked"]["request"]["mask"] == str(tmp_path / "mask.png") and "mask" not in found["plain"]["request"]
    ours, theirs = outputs(tmp_path / "ray"), outputs(tmp_path / "local")
    assert ours.keys() == theirs.keys() == {"images/masked/00-a-cat.png", "images/plain/00-a-cat.png"}
    for name in theirs:
        assert np.abs(ours[name].astype(int) - theirs[name]).max() <= LEVELS, name
    # The actor read the mask: outside it (and a latent pixel around it), the paste put back the photo's pixels.
    source = np.asarray(resize_for_model(Image.open(images / "p0.png"), 128))  # 192x128: columns x 1.2
    near = np.zeros((128, 192), bool)
    near[32 - 8 : 96 + 8, 60 - 8 : 132 + 8] = True
    masked = ours["images/masked/00-a-cat.png"]
    assert np.array_equal(masked[~near], source[~near]) and not np.array_equal(masked[near], source[near])


def test_evaluate_use_masks_on_ray_edits_inside_the_masks_as_here(cluster, evaluate, tmp_path):
    """Latent blending alone (no paste): outside the masks the outputs are decoded source latents, computed by each
    backend's own model instance, so Ray's must match the local ones there within ``LEVELS``."""
    assert evaluate(tmp_path / "local", "--use-masks") == 0
    assert evaluate(tmp_path / "ray", "--use-masks", "--backend", "ray", "--actors", "2") == 0
    local, ray = (json.loads((tmp_path / name / "results.json").read_text()) for name in ("local", "ray"))
    assert ray["masks"] == local["masks"] == "pie-bench"
    assert [row["setting_mask"] for row in ray["rows"]] == ["pie-bench"] * 3
    assert "mode: masked editing inside PIE-Bench&#x27;s masks" in (tmp_path / "ray" / "index.html").read_text()
    for ours, theirs in zip(ray["rows"], local["rows"], strict=True):
        assert ours["worker"].startswith("ray:") and ours["source"] == theirs["source"]
        keep = ~near_pie_mask(SAMPLES / "pie-bench", ours["source"])
        output, expected = (
            np.asarray(Image.open(tmp_path / name / row["output"]).convert("RGB")).astype(int)
            for name, row in (("ray", ours), ("local", theirs))
        )
        assert np.abs(output[keep] - expected[keep]).max() <= LEVELS, ours["source"]
