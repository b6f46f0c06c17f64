"""Benchmark formats: TI2I yaml files (real and generated sources) and PIE-Bench folders, with their masks."""

import json

import numpy as np
import pytest
from PIL import Image

from pnp.app.form import form_inputs
from pnp.config import ConfigError, PnPConfig
from pnp.evaluation.backends import make_job, parse_backend
from pnp.evaluation.benchmarks import PIE_BENCH, TI2I
from pnp.evaluation.load import load_benchmark
from pnp.evaluation.piebench import decode_mask, decode_runs
from support.paths import ROOT, SAMPLES


def test_run_length_decoding_matches_a_hand_made_mask():
    # 3x4 image, flattened: runs [1, 2] -> pixels 1, 2; [6, 1] -> pixel 6; [10, 5] runs past the end (12) and is cut.
    expected = np.array([[0, 1, 1, 0], [0, 0, 1, 0], [0, 0, 1, 1]], dtype=np.float32)
    assert np.array_equal(decode_runs([1, 2, 6, 1, 10, 5], 12).reshape(3, 4), expected)


def test_pie_bench_masks_count_the_border_as_edited():
    # 5x6 image with one interior run [8, 3] -> row 1, columns 2-4; PIE-Bench sets the border to 1.
    expected = np.ones((5, 6), dtype=np.float32)
    expected[1:4, 1:5] = 0
    expected[1, 2:5] = 1
    assert np.array_equal(decode_mask([8, 3], 5, 6), expected)


def test_the_ti2i_sample_has_real_and_generated_sources():
    benchmark = load_benchmark(SAMPLES / "ti2i" / "ti2i-sample.yaml")
    assert benchmark.kind == TI2I and benchmark.name == "ti2i-sample"
    real, house, generated = benchmark.sources
    assert real.image == SAMPLES / "ti2i" / "images" / "circle.png"
    assert real.prompts == ("a red apple on a blue tablecloth", "a sunset over the sea")
    assert real.info == {"source_prompt": "a red circle on a blue background"}
    assert house.info == {"source_prompt": None}
    assert generated.image is None
    assert (
        generated.generation.prompt,
        generated.generation.seed,
        generated.generation.scale,
        generated.generation.steps,
    ) == ("a photo of a horse in a field", 7, 5.0, 10)
    assert len({s.key for s in benchmark.sources}) == 3


def test_a_generated_source_brings_its_prompt_scale_steps_and_seed():
    benchmark = load_benchmark(SAMPLES / "ti2i" / "ti2i-sample.yaml")
    base = PnPConfig(prompt="x", num_inference_steps=50, guidance_scale=7.5, resolution=256)
    job = make_job(benchmark.sources[2], base)
    assert (
        job.config.generation_prompt,
        job.config.generation_guidance_scale,
        job.config.num_inference_steps,
        job.seed,
    ) == ("a photo of a horse in a field", 5.0, 10, 7)
    assert (job.config.guidance_scale, job.config.resolution) == (7.5, 256)
    real = make_job(benchmark.sources[0], base)
    assert real.config.prompt == benchmark.sources[0].prompts and real.config.num_inference_steps == 50


def test_the_pie_bench_sample_decodes_its_masks_over_its_images():
    benchmark = load_benchmark(SAMPLES / "pie-bench")
    assert benchmark.kind == PIE_BENCH and len(benchmark.sources) == 3
    circle = benchmark.sources[0]
    assert circle.prompts == ("a green circle on a blue background",)  # brackets removed
    assert circle.editing_type == "6" and circle.info["editing_prompt"] == "a [green] circle on a blue background"
    with Image.open(circle.image) as image:
        pixels = np.asarray(image.convert("RGB"))
    mask = decode_mask(circle.mask, *pixels.shape[:2])
    red = np.all(pixels == (255, 0, 0), axis=-1)
    # The mask is the red circle (drawn with the same geometry) plus PIE-Bench's border.
    assert np.array_equal(mask[1:-1, 1:-1] == 1, red[1:-1, 1:-1])


def write_yaml(folder, text):
    path = folder / "bench.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "text, message",
    [
        ("- init_img: missing.png\n  target_prompts: [a cat]\n", "entry 1: no image at"),
        ("- init_img: a.png\n  target_prompts: []\n", "entry 1: target prompts must be a list of non-empty strings"),
        (
            "- source_prompt: a horse\n  seed: 1\n  target_prompts: [a zebra]\n",
            "has neither init_img (a real image) nor scale, ddim_steps",
        ),
        (
            "- source_prompt: a horse\n  seed: -1\n  scale: 5\n  ddim_steps: 50\n  target_prompts: [a zebra]\n",
            "entry 1: seed: -1 is out of range",
        ),
        ("a: [b\n", "is not valid yaml"),
        ("just text\n", "expected a list of entries"),
    ],
)
def test_bad_ti2i_files_name_the_entry_and_the_problem(tmp_path, text, message):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    with pytest.raises(ConfigError) as caught:
        load_benchmark(write_yaml(tmp_path, text))
    assert caught.value.param == "benchmark" and message in caught.value.reason


def test_bad_pie_bench_entries_are_refused_before_work(tmp_path):
    (tmp_path / "annotation_images").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "annotation_images" / "a.png")
    entry = {"image_path": "a.png", "editing_prompt": "a [cat]", "editing_type_id": "1", "mask": [20, 1]}
    (tmp_path / "mapping_file.json").write_text(json.dumps({"k1": entry}))
    with pytest.raises(ConfigError, match="a mask run starts past the last of the image's 16 pixels"):
        load_benchmark(tmp_path)
    (tmp_path / "mapping_file.json").write_text(json.dumps({"k1": {**entry, "mask": [1, 2, 3]}}))
    with pytest.raises(ConfigError, match="entry k1: mask must be a list of"):
        load_benchmark(tmp_path)
    with pytest.raises(ConfigError, match="has no mapping_file.json"):
        load_benchmark(tmp_path / "annotation_images")


@pytest.mark.parametrize(
    "text, kind",
    [
        ("local", "local"),
        ("http://127.0.0.1:5000, http://10.0.0.2:5000/", "http"),
        ("replicate:someone/pnp", "replicate"),
        ("replicate:someone/pnp:" + "ab12" * 16, "replicate"),
    ],
)
def test_backend_syntax(text, kind):
    assert parse_backend(text).kind == kind


@pytest.mark.parametrize("text", ["ftp://host", "127.0.0.1:5000", "replicate:pnp", "replicate:a/b:latest"])
def test_bad_backends_are_refused(text):
    with pytest.raises(ConfigError) as caught:
        parse_backend(text)
    assert caught.value.param == "backend"


def test_form_inputs_are_the_predictors_inputs():
    import inspect

    from predict import Predictor

    config = PnPConfig(prompt=["a cat", "a dog"], negative_prompt="blurry", num_inference_steps=4, resolution=256)
    inputs = form_inputs(config, seed=3)
    assert set(inputs) <= set(inspect.signature(Predictor.predict).parameters)
    assert inputs["translation_prompts"] == "a cat; a dog" and inputs["scale"] == 10.0 and inputs["seed"] == 3
    assert inputs["generation_prompt"] == "" and inputs["negative_prompt"] == "blurry"
    assert inputs["output_format"] == "png"  # lossless, so servers' outputs equal local ones
    with pytest.raises(ConfigError, match="contains ';'"):
        form_inputs(PnPConfig(prompt="a cat; a dog"), seed=0)


def test_a_bad_benchmark_is_one_line_and_exit_status_2_before_torch_loads(tmp_path):
    import subprocess
    import sys

    probe = (
        "import sys, runpy; sys.argv = ['pnp', 'evaluate', 'missing.yaml', '--out', 'out']\n"
        "try:\n    runpy.run_module('pnp', run_name='__main__')\n"
        "except SystemExit as exit:\n    print(exit.code, 'loaded' if 'torch' in sys.modules else 'light')"
    )
    root = ROOT
    done = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
        env={**__import__("os").environ, "PYTHONPATH": str(root)},
    )
    assert done.stdout.split() == ["2", "light"], done.stderr
    assert done.stderr.strip().splitlines() == ["error: BENCHMARK: no file at missing.yaml"]
    assert not (tmp_path / "out").exists()
