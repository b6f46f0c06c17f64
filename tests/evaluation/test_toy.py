"""The toy benchmark: its shipped files, the rule that makes a benchmark toy, its columns on known images, and a run of
``pnp evaluate`` on it with the toy model."""

import importlib.util
import json

import numpy as np
import pytest
from PIL import Image

from pnp.evaluation.benchmarks import TI2I
from pnp.evaluation.load import load_benchmark
from pnp.evaluation.report import rows_of
from pnp.evaluation.toy import TOY_METRICS, is_toy, toy_scores
from pnp.toy.quality import sources
from pnp.toy.scorer import mask_iou, read
from pnp.toy.world import Scene, Shape, render
from support.evaluation import run_evaluate
from support.paths import ROOT, SAMPLES

TOY = SAMPLES / "toy" / "toy.yaml"


def test_the_shipped_toy_benchmark_is_what_the_script_makes(tmp_path):
    spec = importlib.util.spec_from_file_location("samples", ROOT / "scripts" / "make_evaluation_samples.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.write_toy(tmp_path)
    made = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert made == sorted(p.relative_to(TOY.parent) for p in TOY.parent.rglob("*") if p.is_file())
    assert (tmp_path / "toy.yaml").read_text() == TOY.read_text()
    for name in made:
        if name.suffix == ".png":
            assert np.array_equal(np.asarray(Image.open(tmp_path / name)), np.asarray(Image.open(TOY.parent / name)))


def test_the_toy_benchmark_recolours_and_reshapes_rendered_scenes():
    benchmark = load_benchmark(TOY)
    assert benchmark.kind == TI2I and len(benchmark.sources) == 8
    first = benchmark.sources[0]
    assert first.info == {"source_prompt": "a red triangle"}
    assert first.prompts == ("a green triangle", "a red circle")
    source = sources(1)[0]
    assert np.array_equal(np.asarray(Image.open(first.image)), np.asarray(source.image))
    assert all(len(s.prompts) == 2 for s in benchmark.sources)


def test_a_benchmark_is_toy_when_every_prompt_is_a_one_shape_caption(tmp_path):
    assert is_toy(load_benchmark(TOY))
    assert not is_toy(load_benchmark(SAMPLES / "ti2i" / "ti2i-sample.yaml"))
    assert not is_toy(load_benchmark(SAMPLES / "pie-bench"))
    image = SAMPLES / "toy" / "images" / "00-red-triangle.png"
    for prompts in (["a blue circle", "a red apple"], ["a blue circle and a red square"]):
        path = tmp_path / "mixed.yaml"
        path.write_text(f"- init_img: {image}\n  target_prompts: {json.dumps(prompts)}\n")
        assert not is_toy(load_benchmark(path)), prompts


RED_CIRCLE = Scene((Shape("circle", "red", 0.5, 0.5, 0.5),))  # 64 px across at 128 px


def test_the_target_scene_itself_scores_colour_shape_and_iou_one():
    source = render(RED_CIRCLE).image
    blue = render(RED_CIRCLE.replace_shape(0, colour="blue")).image
    assert toy_scores(source, [blue], ["a blue circle"]) == [{"toy_iou": 1.0, "toy_colour": 1.0, "toy_shape": 1.0}]


def test_an_output_in_the_sources_colour_scores_colour_zero():
    source = render(RED_CIRCLE).image
    assert toy_scores(source, [source], ["a blue circle"]) == [{"toy_iou": 1.0, "toy_colour": 0.0, "toy_shape": 1.0}]


def test_a_reshaped_output_overlaps_the_source_as_a_circle_its_bounding_square():
    source = render(RED_CIRCLE).image
    square = render(RED_CIRCLE.replace_shape(0, kind="square")).image
    [scores] = toy_scores(source, [square], ["a red square"])
    assert scores["toy_colour"] == scores["toy_shape"] == 1.0
    # A circle inside the square of its diameter covers pi/4 of it (up to the pixel grid).
    assert scores["toy_iou"] == pytest.approx(np.pi / 4, abs=0.01)


def test_an_output_without_a_shape_scores_zero():
    source = render(RED_CIRCLE).image
    blank = Image.new("RGB", source.size, (245, 245, 245))
    assert toy_scores(source, [blank], ["a red circle"]) == [{"toy_iou": 0.0, "toy_colour": 0.0, "toy_shape": 0.0}]


def test_rows_of_other_benchmarks_have_no_toy_columns():
    record = {
        "key": "k",
        "source_image": "s.png",
        "worker": "local",
        "settings": {},
        "pairs": [{"prompt": "a cat", "output": "o.png", "scores": {"clip_score": 30.0}}],
    }
    [row] = rows_of("b", [record])
    assert row["clip_score"] == 30.0 and "psnr" in row  # the usual columns, empty where not computed
    assert not set(TOY_METRICS) & set(row)


def test_evaluate_on_the_toy_benchmark_writes_the_toy_columns(tmp_path, clip_model_dir, dino_model_dir, capsys):
    fast = ["--limit", "1", "--steps", "2", "--device", "cpu", "--dtype", "float32", "--quiet"]
    assert run_evaluate(TOY, tmp_path, "toy", clip_model_dir, dino_model_dir, *fast) == 0
    table = capsys.readouterr().out
    summary = json.loads((tmp_path / "results.json").read_text())
    rows = summary["rows"]
    assert [row["prompt"] for row in rows] == ["a green triangle", "a red circle"]
    source_mask = sources(1)[0].mask
    for row, (colour, kind) in zip(rows, [("green", "triangle"), ("red", "circle")]):
        # Recomputed here from the written output and the exact mask the source was rendered with.
        reading = read(Image.open(tmp_path / row["output"]))
        main = reading.main
        assert row["toy_colour"] == float(main is not None and main.colour == colour)
        assert row["toy_shape"] == float(main is not None and main.kind == kind)
        assert row["toy_iou"] == pytest.approx(mask_iou(reading.mask, source_mask))
        assert row["clip_score"] is not None  # beside the usual columns
    for name in TOY_METRICS:
        assert summary["means"][name] == {"mean": pytest.approx(np.mean([r[name] for r in rows])), "pairs": 2}
        assert name in table
        assert name in (tmp_path / "results.csv").read_text().splitlines()[0].split(",")
    sheet = (tmp_path / "index.html").read_text()
    assert "toy_colour" in sheet  # in the table of means
    for row in rows:  # and under each output
        assert f"iou {row['toy_iou']:.2f} · colour {row['toy_colour']:.2f} · shape {row['toy_shape']:.2f}" in sheet
