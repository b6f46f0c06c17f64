"""``python -m pnp evaluate`` on every backend: local, a pool of real Cog servers, and Replicate (a fake API).

Outputs and scores must be the same whichever backend ran them, up to float32 rounding (see
``assert_same_results``): the servers run float32 on the CPU, like the local runs here, and return
lossless PNGs. The command runs in-process through ``pnp.app.cli.main`` (the same code as
``python -m pnp``); the servers start once for the module.
"""

import json
import os
import shutil
import signal
import threading
import time

import numpy as np
import pytest
import requests
from PIL import Image

from pnp.app.cli import main
from pnp.evaluation.metrics import METRICS
from pnp.evaluation.records import MANIFEST
from pnp.images import resize_for_model
from support.cog_server import CogServer, write_schema
from support.evaluation import near_pie_mask, run_evaluate
from support.fake_replicate import TOKEN, FakeReplicate
from support.paths import SAMPLES

PIE = SAMPLES / "pie-bench"
SERVER_ENV = {"PNP_DEVICE": "cpu", "PNP_DTYPE": "float32", "HF_HUB_OFFLINE": "1"}
# Fast, and away from the defaults, so that every setting must reach the servers to match.
SETTINGS = [
    "--steps",
    "2",
    "--resolution",
    "128",
    "--scale",
    "7.5",
    "--negative-prompt",
    "blurry",
    "--negative-prompt-alpha",
    "0.5",
    "--feature-injection-threshold",
    "0.5",
]


@pytest.fixture(scope="module")
def servers(tmp_path_factory, tiny_model_dir):
    """Three Cog servers on predict.py and the tiny model; the last one is killed by a test."""
    schema = tmp_path_factory.mktemp("cog-schema")
    write_schema(schema)
    started = []
    try:
        for _ in range(3):
            folder = tmp_path_factory.mktemp("cog-server")
            shutil.copytree(schema / ".cog", folder / ".cog")
            started.append(CogServer(folder, {**SERVER_ENV, "PNP_WEIGHTS": str(tiny_model_dir)}))
        for server in started:
            assert server.wait_for_setup()["status"] == "READY", server.log()
        yield started
    finally:
        for server in started:
            server.stop()


@pytest.fixture(scope="module")
def evaluate(tiny_model_dir, clip_model_dir, dino_model_dir):
    def run(benchmark, out, *extra):
        fast = ["--device", "cpu", "--dtype", "float32", "--quiet", *SETTINGS]
        return run_evaluate(benchmark, out, tiny_model_dir, clip_model_dir, dino_model_dir, *fast, *extra)

    return run


@pytest.fixture(scope="module")
def ti2i(tmp_path_factory):
    """A TI2I file with a real source (two prompts, and a source prompt, which TI2I allows) and a generated one."""
    folder = tmp_path_factory.mktemp("ti2i")
    (folder / "ti2i.yaml").write_text(
        f"- init_img: {SAMPLES / 'ti2i' / 'images' / 'circle.png'}\n"
        "  source_prompt: a red circle\n"
        "  target_prompts: [a red apple on a blue tablecloth, a sunset over the sea]\n"
        "- source_prompt: a photo of a horse in a field\n  seed: 11\n  scale: 6\n  ddim_steps: 2\n"
        "  target_prompts: [a photo of a zebra in a field]\n"
    )
    return folder / "ti2i.yaml"


@pytest.fixture(scope="module")
def local_ti2i(ti2i, tmp_path_factory):
    """The TI2I file on the local backend as a user runs it without weights: ``--model tiny``, so random metric models.

    The random models are built with the same seeds as the test fixtures' folders, so the results
    equal those of runs that load the fixtures' models.
    """
    out = tmp_path_factory.mktemp("local-ti2i")
    assert (
        main(
            [
                "evaluate",
                str(ti2i),
                "--out",
                str(out),
                "--model",
                "tiny",
                "--device",
                "cpu",
                "--dtype",
                "float32",
                "--quiet",
                *SETTINGS,
            ]
        )
        == 0
    )
    assert json.loads((out / "run.json").read_text())["clip_model"] == "tiny"
    return out


@pytest.fixture(scope="module")
def local_pie(evaluate, tmp_path_factory):
    """The PIE-Bench sample on the local backend, run as an interrupted run: the first source, then all of them."""
    out = tmp_path_factory.mktemp("local-pie")
    assert evaluate(PIE, out, "--limit", "1") == 0
    first = (out / "records" / "000000000000.json").stat().st_mtime_ns
    assert evaluate(PIE, out) == 0
    return out, first


def results(out):
    """Each pair's scores and settings (not which worker ran it), and its output's and source's pixels."""
    rows = json.loads((out / "results.json").read_text())["rows"]
    for row in rows:
        row.pop("worker"), row.pop("setting_model")
        row["output_pixels"] = np.asarray(Image.open(out / row["output"])).tolist()
        row["source_pixels"] = np.asarray(Image.open(out / row["source_image"])).tolist()
    return rows


# A server runs the translation in another process, with its own copy of the weights, and may take a
# source from its cache, running other batches: float32 sums in another order (tests/helpers.py's
# INSTANCE_TOLERANCE, test_engine's BATCH_TOLERANCE), which can move an 8-bit pixel by one level,
# and the scores computed from it. One level added to or taken from every pixel of the PIE-Bench
# sample's outputs moved their scores by at most 1.8e-3 of their size (clip_cosine: 5.2e-4 of 0.33;
# on 1% of the pixels, 4.5e-4): 1e-2 of it. A setting that fails to reach a server moves pixels by far more.
SCORE_TOLERANCE = 1e-2


def assert_same_results(ours, theirs):
    """The same pairs, settings and names; pixels within one level, scores within SCORE_TOLERANCE of their size."""
    assert [(row["source"], row["prompt"]) for row in ours] == [(row["source"], row["prompt"]) for row in theirs]
    for mine, other in zip(ours, theirs):
        assert mine.keys() == other.keys()
        for key, value in mine.items():
            if key.endswith("_pixels"):
                mine_pixels, other_pixels = np.asarray(value, int), np.asarray(other[key], int)
                assert mine_pixels.shape == other_pixels.shape, key
                assert np.abs(mine_pixels - other_pixels).max() <= 1, key
            elif key in METRICS and value is not None:
                assert value == pytest.approx(other[key], rel=SCORE_TOLERANCE, abs=1e-6), key
            else:
                assert value == other[key], key


def workers(out):
    return sorted({json.loads(p.read_text())["worker"] for p in (out / "records").iterdir()})


def test_an_interrupted_local_run_resumes_without_redoing_finished_sources(local_pie, capsys):
    out, first = local_pie
    assert (out / "records" / "000000000000.json").stat().st_mtime_ns == first  # reused, not rewritten
    summary = json.loads((out / "results.json").read_text())
    assert (summary["name"], summary["benchmark"], summary["sources"], summary["pairs"]) == (
        "pie-bench",
        str(PIE),
        3,
        3,
    )
    assert set(summary["means_by_editing_type"]) == {"6 change color", "9 change style"}
    rows = summary["rows"]
    assert [row["setting_guidance_scale"] for row in rows] == [7.5] * 3
    assert all(row["psnr"] is not None and row["structure_distance_pie_bench"] is not None for row in rows)
    header = (out / "results.csv").read_text().splitlines()[0].split(",")
    assert {"clip_score", "clip_score_edited", "psnr", "lpips", "mse", "ssim", "setting_negative_prompt"} <= set(header)
    assert "<img loading='lazy' src='images/000000000000/source.png'" in (out / "index.html").read_text()


def test_the_results_keep_what_the_benchmark_says_of_each_source(local_ti2i, local_pie):
    rows = json.loads((local_ti2i / "results.json").read_text())["rows"]
    assert [row["source_prompt"] for row in rows] == ["a red circle"] * 2 + ["a photo of a horse in a field"]
    assert "source_prompt" in (local_ti2i / "results.csv").read_text().splitlines()[0].split(",")
    mapping = json.loads((PIE / "mapping_file.json").read_text())
    for row in json.loads((local_pie[0] / "results.json").read_text())["rows"]:
        entry = mapping[row["source"]]
        assert [row[k] for k in ("original_prompt", "editing_instruction", "blended_word")] == [
            entry["original_prompt"],
            entry["editing_instruction"],
            entry["blended_word"],
        ]


def test_a_folder_holding_another_run_is_refused_before_work(local_pie, evaluate, capsys):
    out, _ = local_pie
    capsys.readouterr()
    assert evaluate(PIE, out, "--scale", "9") == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: --out: {out} holds an evaluation with other settings") and "--overwrite" in line


def test_two_cog_servers_give_the_local_results(servers, evaluate, ti2i, local_ti2i, tmp_path):
    out = tmp_path / "http"
    assert evaluate(ti2i, out, "--backend", f"{servers[0].url},{servers[1].url}") == 0
    assert_same_results(results(out), results(local_ti2i))
    assert set(workers(out)) <= {servers[0].url, servers[1].url}


def test_a_server_killed_mid_run_loses_no_pair(servers, evaluate, local_pie, tmp_path, capsys):
    survivor, victim = servers[1], servers[2]
    out = tmp_path / "killed"
    status = {}
    run = threading.Thread(
        target=lambda: status.setdefault("exit", evaluate(PIE, out, "--backend", f"{victim.url},{survivor.url}")),
        daemon=True,
    )
    run.start()
    deadline = time.monotonic() + 60
    while requests.get(f"{victim.url}/health-check", timeout=10).json()["status"] != "BUSY":
        assert time.monotonic() < deadline, "the victim never got work"
        time.sleep(0.005)
    os.killpg(victim.process.pid, signal.SIGKILL)  # in the middle of one of our predictions
    run.join(timeout=120)
    assert status["exit"] == 0
    assert_same_results(results(out), results(local_pie[0]))
    assert workers(out) == [survivor.url]  # the victim finished nothing: its job moved
    assert f"warning: {victim.url} stopped answering" in capsys.readouterr().err


def test_replicate_predictions_give_the_local_results(
    servers, evaluate, local_pie, ti2i, local_ti2i, tmp_path, monkeypatch, capsys
):
    fake = FakeReplicate(servers[0].url)
    try:
        monkeypatch.setenv("REPLICATE_BASE_URL", fake.url)
        monkeypatch.setenv("REPLICATE_POLL_INTERVAL", "0.05")
        monkeypatch.delenv("REPLICATE_API_TOKEN", raising=False)
        assert evaluate(PIE, tmp_path / "no-token", "--backend", "replicate:someone/pnp") == 2
        assert "error: --backend: set REPLICATE_API_TOKEN" in capsys.readouterr().err
        assert not (tmp_path / "no-token").exists()

        monkeypatch.setenv("REPLICATE_API_TOKEN", TOKEN)
        assert evaluate(PIE, tmp_path / "model", "--backend", "replicate:someone/pnp", "--parallel", "2") == 0
        assert_same_results(results(tmp_path / "model"), results(local_pie[0]))
        first = fake.created[0]["input"]
        assert first["input_image"].startswith("data:image/png;base64,")
        assert (first["scale"], first["negative_prompt"], first["negative_prompt_alpha"], first["output_format"]) == (
            7.5,
            "blurry",
            0.5,
            "png",
        )

        version = "5c7d5dc6dd8bf75c1acaa8565735e7986bc5b66206b55cca93cb72c9bf15ccaa"
        assert (
            evaluate(ti2i, tmp_path / "version", "--backend", f"replicate:someone/pnp:{version}", "--limit", "1") == 0
        )
        assert_same_results(results(tmp_path / "version"), results(local_ti2i)[:2])  # the first source's two prompts
        assert fake.created[-1]["version"] == version
    finally:
        fake.stop()


def test_prompts_the_form_cannot_carry_are_refused_before_work(evaluate, tmp_path, capsys):
    bench = tmp_path / "bench.yaml"
    bench.write_text(f"- init_img: {SAMPLES / 'ti2i' / 'images' / 'circle.png'}\n  target_prompts: ['a cat; a dog']\n")
    assert evaluate(bench, tmp_path / "out", "--backend", "http://127.0.0.1:9") == 2
    assert "error: --prompt: 'a cat; a dog' contains ';'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_an_unreachable_server_is_named_before_work(evaluate, tmp_path, capsys):
    assert evaluate(PIE, tmp_path / "out", "--backend", "http://127.0.0.1:9") == 2
    assert "error: --backend: no Cog server answers at http://127.0.0.1:9" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_folder_of_another_run_is_refused_before_any_backend_starts(evaluate, tmp_path, capsys):
    # Starting a Ray cluster or probing servers takes seconds: the folder, a file read, is checked first.
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / MANIFEST).write_text(json.dumps({"benchmark": "another.yaml"}))
    assert evaluate(PIE, tmp_path / "out", "--backend", "http://127.0.0.1:9") == 2
    error = capsys.readouterr().err
    assert "holds an evaluation with other benchmark ('another.yaml'" in error and "no Cog server" not in error


def test_an_unavailable_metric_model_is_said_before_work_and_leaves_no_folder(evaluate, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert evaluate(PIE, tmp_path / "out", "--clip-model", "someone/clip-that-is-not-cached") == 2
    [line] = capsys.readouterr().err.strip().splitlines()[-1:]
    assert line.startswith("error: --clip-model: model 'someone/clip-that-is-not-cached' is not in the local")
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def local_pie_masked(evaluate, tmp_path_factory):
    """The PIE-Bench sample edited inside its own masks with the paste, on the local backend."""
    out = tmp_path_factory.mktemp("local-pie-masked")
    assert evaluate(PIE, out, "--use-masks", "--mask-paste", "--mask-feather", "0") == 0
    return out


def test_use_masks_edits_inside_pie_bench_masks_and_says_so(local_pie_masked, local_pie):
    masked = json.loads((local_pie_masked / "results.json").read_text())
    plain = json.loads((local_pie[0] / "results.json").read_text())
    assert masked["masks"] == "pie-bench" and "masks" not in plain
    assert masked["settings"]["mask_paste"] is True and "mask_paste" not in plain["settings"]
    assert [row["setting_mask"] for row in masked["rows"]] == ["pie-bench"] * 3
    mapping = json.loads((PIE / "mapping_file.json").read_text())
    for ours, theirs in zip(masked["rows"], plain["rows"]):
        source = Image.open(PIE / "annotation_images" / mapping[ours["source"]]["image_path"]).convert("RGB")
        # The output is the source at its working size (128 px) outside the mask: there, with the paste, exactly.
        near = near_pie_mask(PIE, ours["source"])
        output = np.asarray(Image.open(local_pie_masked / ours["output"]).convert("RGB"))
        assert np.array_equal(output[~near], np.asarray(resize_for_model(source, 128))[~near]), ours["source"]
        assert ours["psnr"] > theirs["psnr"], ours["source"]
    sheet = (local_pie_masked / "index.html").read_text()
    assert "mode: masked editing inside PIE-Bench&#x27;s masks (mask_blend_threshold 1.0, mask_dilation 0" in sheet
    assert "mode: unmasked, the whole image may change" in (local_pie[0] / "index.html").read_text()


def test_use_masks_sends_the_masks_to_cog_servers(servers, evaluate, local_pie_masked, tmp_path):
    out = tmp_path / "http-masked"
    assert evaluate(PIE, out, "--use-masks", "--mask-paste", "--mask-feather", "0", "--backend", servers[0].url) == 0
    assert_same_results(results(out), results(local_pie_masked))


def test_use_masks_needs_a_benchmark_with_masks(evaluate, ti2i, tmp_path, capsys):
    assert evaluate(ti2i, tmp_path / "out", "--use-masks") == 2
    assert "error: --use-masks: " in capsys.readouterr().err and not (tmp_path / "out").exists()
