"""LoRA adapters: they change the translation, unloading leaves the UNet exactly as loaded, the source
cache tells adapters and their scales apart, and the command line and predictor take them."""

import base64
import re

import numpy as np
import pytest
import torch
from PIL import Image

from pnp.config import ConfigError
from pnp.pipelines.lora import load_loras, parse_lora
from pnp.pipelines.weight_files import safetensors_problem
from support.cli import FAST as CLI_FAST
from support.cli import run_cli
from support.models import INSTANCE_TOLERANCE, load_tiny, safetensors_bytes, save_random_lora
from support.predictor import fetched_from, run, sent_as

SETTINGS = dict(prompt="a cat", num_inference_steps=3, resolution=128, output_type="latent")


@pytest.fixture(scope="module")
def lora_file(tmp_path_factory):
    return save_random_lora("tiny", tmp_path_factory.mktemp("lora"))


@pytest.fixture(scope="module")
def other_lora_file(tmp_path_factory):
    """Another adapter of the same shapes (another seed)."""
    return save_random_lora("tiny", tmp_path_factory.mktemp("lora"), seed=2)


@pytest.fixture
def own(tiny_model_dir):
    return load_tiny(tiny_model_dir, source_cache=True)


def _state(unet):
    return {name: tensor.clone() for name, tensor in unet.state_dict().items()}


@pytest.mark.parametrize("kind", ["tiny", "tiny-sdxl"])
def test_an_adapter_changes_the_output_and_unloading_restores_the_unet_bit_for_bit(
    kind, tiny_model_dir, tiny_sdxl_model_dir, photo, tmp_path
):
    pipe = load_tiny(tiny_model_dir if kind == "tiny" else tiny_sdxl_model_dir)
    modules, state = dict(pipe.unet.named_modules()), _state(pipe.unet)
    before = pipe(image=photo, **SETTINGS).images
    load_loras(pipe, [(save_random_lora(kind, tmp_path), 1.0)])
    assert len(pipe.unet.state_dict()) > len(state)
    adapted = pipe(image=photo, **SETTINGS).images
    assert (adapted - before).abs().max() > 1e-2
    pipe.unload_lora_weights()
    after = pipe(image=photo, **SETTINGS).images
    assert torch.equal(after, before)
    assert dict(pipe.unet.named_modules()) == modules  # the very modules, not copies
    assert all(torch.equal(tensor, state[name]) for name, tensor in pipe.unet.state_dict().items())
    assert pipe.unet.state_dict().keys() == state.keys()


def test_the_scale_weighs_the_adapter(own, lora_file, photo):
    before = own(image=photo, **SETTINGS).images
    load_loras(own, [(lora_file, 1.0)])
    full = own(image=photo, **SETTINGS).images
    own.set_adapters(["lora0"], [0.0])
    assert torch.equal(own(image=photo, **SETTINGS).images, before)  # scale 0: the adapter adds nothing
    own.set_adapters(["lora0"], [0.5])
    half = own(image=photo, **SETTINGS).images
    assert 0 < (half - before).abs().max() < (full - before).abs().max()


def test_the_source_cache_tells_adapters_and_scales_apart(own, lora_file, other_lora_file, photo):
    def hits():
        return own(image=photo, **SETTINGS).metrics["cache_hits"]

    assert hits() == 0 and hits() == 1
    load_loras(own, [(lora_file, 1.0)])
    assert hits() == 0 and hits() == 1
    own.set_adapters(["lora0"], [0.5])  # no parameter changes, only a scale
    assert hits() == 0
    own.unload_lora_weights()
    assert hits() == 1  # the UNet is again exactly the one the first entry was made with
    load_loras(own, [(other_lora_file, 0.5)])  # same names, shapes and scale, other weights
    assert hits() == 0


def test_specs_and_files_are_checked(lora_file, tmp_path):
    assert parse_lora(str(lora_file)) == (lora_file, 1.0)
    assert parse_lora(f"{lora_file}:0.25") == (lora_file, 0.25)
    assert parse_lora(str(lora_file.parent)) == (lora_file.parent, 1.0)
    pickled = tmp_path / "adapter.bin"
    pickled.write_bytes(b"never read")
    for spec, message in (
        (f"{lora_file}:1.5", "1.5 is out of range"),
        (str(tmp_path / "none.safetensors"), "no file at"),
        (str(pickled), "pickled file, which is not loaded by default"),
    ):
        with pytest.raises(ConfigError, match=message) as error:
            parse_lora(spec)
        assert error.value.param == "lora"
    assert parse_lora(str(pickled), allow_pickle=True)[0] == pickled


def test_safetensors_are_known_by_their_content_not_their_name(lora_file, tmp_path):
    whole = lora_file.read_bytes()
    files = {
        "adapter.bin": whole,  # as Cog names an upload
        "adapter": whole,
        "garbage.safetensors": b"garbage " * 8,
        "short.safetensors": b"1234",
        "list.safetensors": safetensors_bytes([1, 2]),
        "cut.safetensors": whole[:-100],
    }
    problems = {}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        problems[name] = safetensors_problem(tmp_path / name)
    header = len(whole) - 8 - int.from_bytes(whole[:8], "little")
    assert problems == {
        "adapter.bin": None,
        "adapter": None,
        "garbage.safetensors": "is not a safetensors file (it does not start with a safetensors header)",
        "short.safetensors": "is not a safetensors file (it does not start with a safetensors header)",
        "list.safetensors": "is not a safetensors file (its header is not a JSON object)",
        "cut.safetensors": f"is cut short: its header describes {header} bytes of tensors, the file holds "
        f"{header - 100}",
    }
    # The command line checks the content before the model loads; a safetensors file named .bin is no pickle.
    assert parse_lora(str(tmp_path / "adapter.bin")) == (tmp_path / "adapter.bin", 1.0)
    with pytest.raises(ConfigError, match=re.escape("garbage.safetensors is not a safetensors file (it does not")):
        parse_lora(str(tmp_path / "garbage.safetensors"))


def test_an_adapter_under_another_name_loads_as_under_its_own(own, lora_file, tmp_path, photo):
    load_loras(own, [(lora_file, 1.0)])
    expected = own(image=photo, **SETTINGS).images
    own.unload_lora_weights()
    renamed = tmp_path / "tmpabcdefghfile.bin"
    renamed.write_bytes(lora_file.read_bytes())
    load_loras(own, [(renamed, 1.0)])
    # Each load makes a new copy of the adapter's weights (INSTANCE_TOLERANCE); the adapter moves them by > 1e-2.
    torch.testing.assert_close(own(image=photo, **SETTINGS).images, expected, **INSTANCE_TOLERANCE)
    assert list(tmp_path.iterdir()) == [renamed]  # the link diffusers read it through is gone


def test_an_adapter_for_another_architecture_is_refused_with_the_reason_and_nothing_stays(own, tmp_path):
    sdxl_lora = save_random_lora("tiny-sdxl", tmp_path)
    state = _state(own.unet)
    with pytest.raises(ConfigError) as error:
        load_loras(own, [(sdxl_lora, 1.0)])
    assert error.value.param == "lora"
    # torch's message lists every layer after a line ending in ":"; the reason counts them and shows the first.
    assert re.fullmatch(
        r"pytorch_lora_weights\.safetensors cannot be loaded into this model as a LoRA adapter \(\d+ of its layers "
        r"have other shapes than this model's, e\.g\. down_blocks\.1\.attentions\.0\.transformer_blocks\.0\.attn1\."
        r"to_q\.lora_A\.weight: \[4, 64\] in the adapter, \[4, 32\] in the model; it was made for another "
        r"architecture\)",
        error.value.reason,
    ), error.value.reason
    assert own.unet.state_dict().keys() == state.keys()


def test_load_errors_call_the_file_by_its_label_not_where_it_lies(own, tmp_path):
    """A file that passes the header check and fails in diffusers: its path (a server's temporary folder) stays out."""
    tensor = {"dtype": "XX", "shape": [2], "data_offsets": [0, 8]}  # no such dtype
    odd = tmp_path / "tmpabcdefghodd.safetensors"
    odd.write_bytes(safetensors_bytes({"a.lora_A.weight": tensor}, bytes(8)))
    empty = tmp_path / "tmpabcdefghempty.safetensors"
    empty.write_bytes(safetensors_bytes({}))
    state = _state(own.unet)
    reasons = []
    for path, label in ((odd, "odd.safetensors"), (empty, "empty.safetensors")):
        with pytest.raises(ConfigError) as error:
            load_loras(own, [(path, 1.0)], "lora_weights", [label])
        reasons.append(str(error.value))
        assert own.unet.state_dict().keys() == state.keys()
    assert reasons[0].startswith("lora_weights: odd.safetensors cannot be loaded into this model as a LoRA adapter (")
    assert str(tmp_path) not in reasons[0] and "tmpabcdefgh" not in reasons[0]
    assert reasons[1] == (
        "lora_weights: empty.safetensors holds no LoRA layer of this model's UNet or text encoders: "
        "it is empty, or was made for another kind of model"
    )


def test_cli_takes_adapters_with_scales(tmp_path, photo, lora_file):
    photo.save(tmp_path / "in.png")
    done = run_cli(
        "translate",
        "--image",
        "in.png",
        "--prompt",
        "a cat",
        "--out",
        "out",
        *CLI_FAST,
        "--lora",
        f"{lora_file}:0.8",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert (
        "LoRA pytorch_lora_weights.safetensors at 0.8" in done.stderr and (tmp_path / "out" / "00-a-cat.png").exists()
    )
    done = run_cli(
        "translate",
        "--image",
        "in.png",
        "--prompt",
        "a cat",
        "--out",
        "bad",
        *CLI_FAST,
        "--lora",
        f"{lora_file}:2",
        cwd=tmp_path,
    )
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        "error: --lora: 2.0 is out of range, use a value from 0 to 1"
    ]


@pytest.fixture(scope="module")
def predictor(tiny_model_dir):
    from predict import Predictor

    with pytest.MonkeyPatch.context() as mp:
        # The source cache off: predictions are compared bit for bit (test_predict's fixture does the same).
        for name, value in (
            ("PNP_WEIGHTS", str(tiny_model_dir)),
            ("PNP_DEVICE", "cpu"),
            ("PNP_DTYPE", "float32"),
            ("PNP_SOURCE_CACHE_BYTES", "0"),
        ):
            mp.setenv(name, value)
        model = Predictor()
        model.setup()
    return model


def test_the_predictor_applies_an_adapter_for_one_prediction_only(predictor, lora_file, tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    inputs = dict(generation_prompt="a house", translation_prompts="a cat", seed=5)

    def pixels(outputs):
        return [p.read_bytes() for p in outputs]

    plain = pixels(run(predictor, **inputs))
    state = _state(predictor.pipe.unet)
    sent = fetched_from("https://example.com/adapters/style.safetensors", lora_file.read_bytes())
    adapted = pixels(run(predictor, lora_weights=sent, lora_scale=1.0, **inputs))
    assert adapted[1] != plain[1]
    assert pixels(run(predictor, **inputs)) == plain
    assert all(torch.equal(tensor, state[name]) for name, tensor in predictor.pipe.unet.state_dict().items())
    assert predictor.pipe.unet.state_dict().keys() == state.keys()


@pytest.mark.parametrize("sent", ["data URI", "URL without a file name"])
def test_the_predictor_knows_an_adapter_by_its_content(predictor, lora_file, tmp_path, monkeypatch, sent):
    """Cog names a data URI's file file.bin, and a URL's after its last segment: neither need say .safetensors."""
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    inputs = dict(generation_prompt="a house", translation_prompts="a cat", seed=5, lora_scale=1.0)
    named = fetched_from("https://example.com/adapters/style.safetensors", lora_file.read_bytes())
    expected = [_pixels(p) for p in run(predictor, lora_weights=named, **inputs)]
    if sent == "data URI":
        other = sent_as("data:application/octet-stream;base64," + base64.b64encode(lora_file.read_bytes()).decode())
        assert other.name.endswith("file.bin")
    else:
        other = fetched_from("https://example.com/adapters/download?id=3", lora_file.read_bytes())
    # Each load makes a new copy of the adapter's weights (tests/helpers.py's INSTANCE_TOLERANCE): a pixel may
    # move by one level.
    got = [_pixels(p) for p in run(predictor, lora_weights=other, **inputs)]
    assert [g.shape for g in got] == [e.shape for e in expected]
    assert all(np.abs(g - e).max() <= 1 for g, e in zip(got, expected, strict=True))


def _pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image, dtype=int)


@pytest.mark.parametrize(
    "kind,message",
    [
        ("server path", "lora_weights: only a file the request brings is read"),
        (
            "pickle",
            "lora_weights: adapter.bin is not a safetensors file (it does not start with a safetensors header); "
            "send the LoRA adapter as a .safetensors file",
        ),
        ("wrong model", "lora_weights: style.safetensors cannot be loaded into this model as a LoRA adapter ("),
    ],
)
def test_the_predictor_refuses_adapters_it_must_not_or_cannot_read(
    predictor, lora_file, tmp_path, monkeypatch, kind, message
):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    if kind == "server path":
        sent = str(lora_file)
    elif kind == "pickle":
        sent = fetched_from("https://example.com/adapter.bin", b"never read")
    else:
        sent = fetched_from(
            "https://example.com/style.safetensors", save_random_lora("tiny-sdxl", tmp_path).read_bytes()
        )
    with pytest.raises(ConfigError) as error:
        run(predictor, generation_prompt="a house", seed=1, lora_weights=sent)
    assert str(error.value).startswith(message)
    assert not any("lora" in name for name in predictor.pipe.unet.state_dict())
