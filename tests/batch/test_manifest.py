"""Reading a batch manifest (CSV or JSONL) into jobs. Torch-free."""

import json

import pytest

from pnp.app.cli import flag
from pnp.batch.manifest import read_manifest
from pnp.config import ConfigError, PnPConfig

DEFAULTS = {"num_inference_steps": 20, "guidance_scale": 9.0, "seed": 3}


def read(path, defaults=DEFAULTS):
    return read_manifest(path, defaults, flag)


def test_csv_rows_become_jobs_with_the_command_lines_names(tmp_path):
    (tmp_path / "m.csv").write_text(
        "id,image,prompt,steps,Negative_Prompt,generation-prompt,seed,inversion-steps\n"
        "cat,photos/cat.png, a tiger ; a lion ;,10,blurry,,,\n"
        ",https://example.com/dog.jpg,a wolf,,,,,40\n"
        ",,a castle,,,a house,11,\n"
    )
    first, second, third = read(tmp_path / "m.csv")
    assert (first.key, second.key, third.key) == ("cat", "row-00002", "row-00003")
    assert first.job.source.image == tmp_path / "photos" / "cat.png"  # relative to the manifest
    assert first.job.config == PnPConfig(
        prompt=("a tiger", "a lion"), num_inference_steps=10, guidance_scale=9.0, negative_prompt="blurry"
    )
    assert second.job.source.image == "https://example.com/dog.jpg"
    assert (second.job.config.num_inference_steps, second.job.config.num_inversion_steps) == (20, 40)
    assert third.job.source.image is None and third.job.config.generation_prompt == "a house"
    assert (third.job.seed, first.job.seed) == (11, 0)  # a seed is a generated source's only
    assert all(row.error is None for row in (first, second, third))


def test_jsonl_rows_take_lists_and_numbers_and_the_defaults_seed(tmp_path):
    rows = [
        {"image": "a.png", "prompt": ["a; b", "c"], "scale": 7.5},
        {"generation_prompt": "a house", "prompt": "a castle", "generation-scale": 3},
    ]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(row) for row in rows) + "\n\n")
    first, second = read(tmp_path / "m.jsonl")
    assert first.job.config.prompt == ("a; b", "c") and first.job.config.guidance_scale == 7.5
    assert second.job.seed == 3 and second.job.config.generation_guidance_scale == 3.0


@pytest.mark.parametrize(
    "cells, error",
    [
        ("a.png,a cat,abc", "steps: expected a whole number, got 'abc'"),
        ("a.png,a cat,0", "steps: 0 is out of range, use a value from 1 to 999"),
        (",a cat,10", "image: give an image or a generation-prompt (and seed), one of the two"),
        ("a.png,,10", "prompt: the row has no prompt: give it a prompt column, or pass --prompt"),
    ],
)
def test_a_rows_bad_setting_is_that_rows_error(tmp_path, cells, error):
    (tmp_path / "m.csv").write_text(f"image,prompt,steps\nok.png,a dog,5\n{cells}\n")
    good, bad = read(tmp_path / "m.csv")
    assert good.error is None and good.job is not None
    assert (bad.job, bad.error) == (None, error)


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("m.txt", "image\na.png\n", "is neither .csv nor .jsonl"),
        ("m.csv", "image,stpes\na.png,3\n", "unknown column 'stpes'; the columns are id, image, mask, prompt"),
        ("m.csv", "image\n", "has no rows"),
        ("m.csv", "image,prompt\na.png,a,b\n", "row 1: more cells than the header has columns"),
        ("m.csv", "id,image,prompt\nx,a.png,a\nx,b.png,b\n", "rows 1 and 2 have the same id 'x'"),
        ("m.csv", "id,image,prompt\n../x,a.png,a\n", "id '../x' cannot name files"),
        ("m.jsonl", '{"image": "a.png"}\n[1, 2]\n', "line 2: expected an object"),
        ("m.jsonl", '{"image": "a.png"\n', "line 1: not JSON"),
    ],
)
def test_a_broken_manifest_is_refused_before_any_work(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError, match="manifest") as caught:
        read(tmp_path / name)
    assert message in caught.value.reason
