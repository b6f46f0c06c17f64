"""The benchmark command, run end to end in quick mode on the tiny random model, and its row plan."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.run import main
from benchmarks.schedule import public_rows
from pnp.config import PnPConfig
from pnp.method.plan import inversion_rows, translation_rows

ROOT = Path(__file__).resolve().parents[1]
QUICK_STEPS = 10  # what --quick promises in the command's help


def rows_by_hand(prompts: int, steps: int) -> int:
    """One row per inversion step; per sampling step, P uncond + P cond rows, plus the source row
    in the first int(0.8 N) steps (the residual-injection window, longer than attention's)."""
    return steps + 2 * prompts * steps + int(0.8 * steps)


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """The report and printed tables of one quick run (one thread: robust on a busy machine)."""
    tmp = tmp_path_factory.mktemp("bench")
    out = tmp / "nested" / "report.json"
    command = [
        sys.executable,
        "-m",
        "benchmarks.run",
        "--quick",
        "--model",
        "tiny",
        "--resolutions",
        "128",
        "--dtypes",
        "float32",
        "--threads",
        "1",
        "--cache-dir",
        str(tmp / "cache"),
        "--out",
        str(out),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(out.read_text()), done.stdout


def test_quick_run_covers_the_quick_grid(quick):
    report, _ = quick
    assert [(r["dtype"], r["resolution"], r["prompts"]) for r in report["runs"]] == [
        ("float32", 128, 1),
        ("float32", 128, 2),
    ]
    assert all(r["steps"] == r["inversion_steps"] == QUICK_STEPS for r in report["runs"])
    assert report["environment"]["threads"] == 1


def test_rows_and_calls_are_what_the_schedule_implies(quick):
    for run in quick[0]["runs"]:
        assert run["rows_match_schedule"]
        assert run["unet_rows"] == rows_by_hand(run["prompts"], QUICK_STEPS)
        assert run["unet_calls"] == 2 * QUICK_STEPS


def test_public_rows_count_both_999_step_passes_and_three_rows_per_prompt_step(quick):
    for run in quick[0]["runs"]:
        assert run["public_rows"] == 999 + 999 + 3 * QUICK_STEPS * run["prompts"]
        assert run["public_calls"] == 999 + 999 + QUICK_STEPS * run["prompts"]
        assert run["public_rows_ratio"] == pytest.approx(run["public_rows"] / run["unet_rows"])


def test_times_add_up_and_ratios_are_positive(quick):
    for run in quick[0]["runs"]:
        phases = {k: v for k, v in run["time"].items() if k != "total_s"}
        assert all(v > 0 for k, v in phases.items() if k != "other_s")
        assert sum(phases.values()) == pytest.approx(run["time"]["total_s"])
        assert run["seconds_per_image"] * run["prompts"] == pytest.approx(run["time"]["total_s"])
        assert run["bare"]["total_s"] == pytest.approx(
            sum(run["bare"][k] for k in ("text_s", "encode_s", "inversion_s", "translation_s", "decode_s"))
        )
        assert run["overhead"]["total"] == pytest.approx(run["time"]["total_s"] / run["bare"]["total_s"])
        assert all(v > 0 for v in run["overhead"].values())
        assert 0 < run["memory"]["working_bytes"] < run["memory"]["peak_bytes"]
        assert 0 <= run["other_cpu_share"] <= 1 and 0 <= run["steal_share"] <= 1


def test_prompt_scaling_is_relative_to_one_prompt(quick):
    one, two = quick[0]["runs"]
    assert one["scaling"]["time_ratio"] == 1 and one["scaling"]["marginal_cost"] is None
    assert two["scaling"]["time_ratio"] == pytest.approx(two["time"]["total_s"] / one["time"]["total_s"])
    assert two["scaling"]["marginal_cost"] == pytest.approx(two["scaling"]["time_ratio"] - 1)


def test_tables_are_printed(quick):
    report, stdout = quick
    rows = [line for line in stdout.splitlines() if line.startswith("| float32")]
    assert len(rows) == 2 * len(report["runs"])  # one line per run in each of the two tables


@pytest.mark.parametrize(
    "steps, inversion_steps, expected_calls",
    [
        (10, 10, 10),
        # 20 inversion steps over 10 sampling steps: stride 50 reaches the noisiest sampling
        # timestep, 901, at its 19th timestep (18 * 50 + 1) and stops there.
        (10, 20, 19),
        (50, 50, 50),
    ],
)
def test_inversion_stops_at_the_noisiest_sampling_timestep(steps, inversion_steps, expected_calls):
    config = PnPConfig(num_inference_steps=steps, num_inversion_steps=inversion_steps, resolution=128)
    assert inversion_rows(config) == [1] * expected_calls


def test_translation_plan_with_chunks():
    config = PnPConfig(prompt=["a", "b", "c"], num_inference_steps=5, resolution=128, max_batch_size=2)
    # int(0.8 * 5) = 4 steps carry the source row, in the first chunk only.
    assert translation_rows(config) == [5, 2] * 4 + [4, 2]
    assert public_rows(3, 5) == 999 + 999 + 45


def test_plan_matches_the_pipeline_with_chunks_and_uneven_inversion(pipe, photo):
    config = PnPConfig(
        prompt=["a", "b", "c"], num_inference_steps=4, num_inversion_steps=8, resolution=128, max_batch_size=2
    )
    rows = []
    handle = pipe.unet.register_forward_pre_hook(lambda module, args: rows.append(args[0].shape[0]))
    try:
        pipe(image=photo, output_type="latent", **config.as_kwargs())
    finally:
        handle.remove()
    assert rows == inversion_rows(config) + translation_rows(config)


def test_rows_only_prints_the_default_schedule_without_running(capsys):
    assert main(["--rows-only", "--prompts", "1,8", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for count in (1, 8):
        ours, public = rows_by_hand(count, 50), 999 + 999 + 3 * 50 * count
        row = next(line for line in lines if line.startswith(f"| {count} "))
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert cells[3:7] == ["100", str(ours), str(999 + 999 + 50 * count), str(public)]


def test_workflows_measure_each_case(tmp_path):
    out = tmp_path / "workflows.json"
    command = [
        sys.executable,
        "-m",
        "benchmarks.workflows",
        "--model",
        "tiny",
        "--resolution",
        "128",
        "--steps",
        "3",
        "--images",
        "1,2",
        "--repeats",
        "1",
        "--threads",
        "1",
        "--cases",
        "cache,generation,images,compile",
        "--compile-backend",
        "eager",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--out",
        str(out),
    ]
    done = subprocess.run(
        command, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())["results"]
    [cache] = results["cache"]
    # 3 inversion rows; 3 steps of [uncond, cond], 2 of them (int(3 * 0.8)) with the source row.
    assert (cache["first_rows"], cache["repeat_rows"]) == (3 + 3 * 2 + 2, 3 * 2)
    [generation] = results["generation"]
    assert (generation["fused_rows"], generation["separate_rows"]) == (3 * 4, 3 * 2 + 3 * 2 + 2)
    one, two = results["images"]
    assert (one["unet_calls"], two["unet_calls"]) == (6, 6) and two["unet_rows"] == 2 * one["unet_rows"]
    assert two["throughput_ratio"] == pytest.approx(two["images_per_s"] / one["images_per_s"])
    [compiled] = results["compile"]
    assert compiled["first_compiled_s"] > 0 and compiled["speedup"] == pytest.approx(
        compiled["eager_s"] / compiled["compiled_s"]
    )
    # The eager backend runs the traced graph with the same kernels in the same order: the same numbers, up to
    # float32 rounding where dynamo reorders an elementwise expression.
    assert compiled["max_abs_diff"] < 1e-5
    assert "Repeat call on a cached source" in done.stdout and "Several images per call" in done.stdout
    assert "Compiled against eager on a source first seen after compiling" in done.stdout


def test_attention_pca_benchmark_reports_memory_against_the_whole_maps(capsys):
    from benchmarks.attention_pca import main as attention_pca

    assert attention_pca(["--resolution", "64", "--images", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    # 64 px: 8 x 8 = 64 positions, 8 heads; 2 images -> 128 x 512 maps of float32 (0.25 MiB).
    assert lines[0] == "2 images at 64 px: maps 128 x 512 (8 heads of 64 positions)"
    assert "PCA working memory" in lines[1] and "passes" in lines[1]
    assert lines[2] == "all maps at once would take 0.2 MiB, a Gram matrix of all rows 0.1 MiB"
