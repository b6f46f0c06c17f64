"""The Cog predictor in-process: its inputs, outputs, errors and setup, on a tiny random-weight model."""

import ast
import typing
from pathlib import Path as LocalPath

import numpy as np
import pytest
import torch
from cog import CancelationException, Path
from PIL import Image

import predict
from pnp.app.form import MODEL_RESOLUTION, config_resolution
from pnp.config import (
    MAX_PROMPTS,
    MAX_RESOLUTION,
    MAX_SAMPLING_STEPS,
    MAX_SEED,
    MIN_RESOLUTION,
    NEGATIVE_SCHEDULES,
    ConfigError,
    PnPConfig,
    check_float,
    check_seed,
    describe_ranges,
)
from pnp.images import ImageError
from pnp.method.timesteps import MAX_INVERSION_STEPS, valid_inversion_steps
from pnp.outputs import OUTPUT_FORMATS, OutputOptions
from pnp.pipelines.loading import ModelError
from pnp.pipelines.lora import LORA_SCALE_RANGE
from predict import Predictor
from support.cog_server import FORM_ORDER, data_uri, sample_photo
from support.hooks import all_hooks
from support.predictor import PREDICT_PARAMETERS, fetched_from, run, sent_as

# Form input -> the pipeline parameter (PnPConfig field, seed, or OutputOptions field) it sets as it is.
ENGINE_FIELDS = {
    "scale": "guidance_scale",
    "feature_injection_threshold": "feature_injection_threshold",
    "attention_injection_threshold": "attention_injection_threshold",
    "negative_prompt": "negative_prompt",
    "negative_prompt_alpha": "negative_prompt_alpha",
    "negative_prompt_schedule": "negative_prompt_schedule",
    "num_inference_steps": "num_inference_steps",
    "num_inversion_steps": "num_inversion_steps",
    "generation_scale": "generation_guidance_scale",
    "seed": "seed",
    "resolution": "resolution",
    "lora_scale": "lora_scale",
    "output_format": "output_format",
    "output_quality": "output_quality",
    "generation_prompt": "generation_prompt",
}
OUTPUT_FIELDS = ("output_format", "output_quality")
PREDICT_HINTS = typing.get_type_hints(Predictor.predict)
INTEGER_INPUTS = [n for n in PREDICT_PARAMETERS if int in (PREDICT_HINTS[n], *typing.get_args(PREDICT_HINTS[n]))]
REFUSED = (
    "input_image: only a file the request brings is read: an upload, a data: URI or an http(s) URL, "
    "not a path on the server"
)


@pytest.fixture(scope="module")
def predictor(tiny_model_dir):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PNP_WEIGHTS", str(tiny_model_dir))
        mp.setenv("PNP_DEVICE", "cpu")
        mp.setenv("PNP_DTYPE", "float32")
        # Every prediction computes its source, so results can be compared bit for bit
        # (test_repeated_sources_come_from_the_cache tests the cache).
        mp.setenv("PNP_SOURCE_CACHE_BYTES", "0")
        model = Predictor()
        model.setup()
    return model


@pytest.fixture
def outputs_root(tmp_path, monkeypatch):
    """The temporary folder during one test: the predictor's output folders, and the files Cog makes of inputs."""
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(root))
    return root


def output_folders(root) -> list:
    return [p for p in root.iterdir() if p.is_dir()]


@pytest.fixture
def photo_file(outputs_root):
    return sent_as(data_uri(sample_photo()))


def pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.float64)


# --- The form: order, documentation, bounds ---


def test_inputs_follow_the_form_order():
    assert list(PREDICT_PARAMETERS) == FORM_ORDER


def test_every_input_is_documented_in_sentences():
    for name, field in PREDICT_PARAMETERS.items():
        assert field.description and len(field.description) > 60 and field.description.endswith("."), name


def test_defaults_are_the_engine_defaults():
    engine, output = PnPConfig(), OutputOptions()
    for name, field_name in ENGINE_FIELDS.items():
        if name in ("seed", "num_inversion_steps", "lora_scale"):
            continue
        expected = getattr(output if field_name in OUTPUT_FIELDS else engine, field_name)
        # The form's "no generation/negative prompt" is the empty string, its "the model's own size"
        # resolution 0; the engine's are None.
        blank = 0 if name == "resolution" else ""
        assert PREDICT_PARAMETERS[name].default == (blank if expected is None else expected), name
    assert config_resolution(PREDICT_PARAMETERS["resolution"].default) is None
    # Replicate's own SDXL model: lora_scale 0.6 by default, from 0 to 1.
    assert (PREDICT_PARAMETERS["lora_scale"].default, *LORA_SCALE_RANGE) == (0.6, 0.0, 1.0)
    assert tuple(PREDICT_PARAMETERS["translation_prompts"].default.split(";")) == engine.prompt
    # Blank: a random seed, and as many inversion steps as sampling steps (the engine's default).
    assert PnPConfig(num_inversion_steps=None).num_inversion_steps == engine.num_inference_steps
    for name in ("input_image", "seed", "num_inversion_steps"):
        assert PREDICT_PARAMETERS[name].default is None, name


def test_choices_are_the_engine_choices():
    assert PREDICT_PARAMETERS["negative_prompt_schedule"].choices == list(NEGATIVE_SCHEDULES)
    assert PREDICT_PARAMETERS["output_format"].choices == list(OUTPUT_FORMATS)
    assert PREDICT_PARAMETERS["resolution"].choices == [
        MODEL_RESOLUTION,
        *range(MIN_RESOLUTION, MAX_RESOLUTION + 1, 64),
    ]
    for choice in PREDICT_PARAMETERS["resolution"].choices:
        assert PnPConfig(resolution=config_resolution(choice)).resolution == (None if choice == 0 else choice)
    assert PREDICT_PARAMETERS["seed"].le == MAX_SEED


@pytest.mark.parametrize("name", [n for n, f in PREDICT_PARAMETERS.items() if f.ge is not None or f.le is not None])
def test_bounds_are_the_engine_bounds(name):
    """The engine accepts each bound and refuses the next value beyond it, naming the parameter."""
    field, engine_name = PREDICT_PARAMETERS[name], ENGINE_FIELDS[name]
    step = 1 if name in INTEGER_INPUTS else 0.01

    def config(value):
        if engine_name == "seed":
            return check_seed(value)
        if engine_name == "lora_scale":
            return check_float("lora_scale", value, *LORA_SCALE_RANGE)
        if engine_name in OUTPUT_FIELDS:
            return OutputOptions(**{engine_name: value})
        extra = {}
        if engine_name == "num_inference_steps" and value >= 1:
            extra = {"num_inversion_steps": valid_inversion_steps(value)[0]}
        if engine_name == "num_inversion_steps":
            extra = {"num_inference_steps": 1}
        return PnPConfig(**{engine_name: value}, **extra)

    for bound, outside in ((field.ge, field.ge - step), (field.le, field.le + step)):
        assert bound is not None, f"{name} needs both bounds"
        config(bound)
        with pytest.raises(ConfigError) as caught:
            config(outside)
        assert caught.value.param == engine_name
    assert PREDICT_PARAMETERS["num_inference_steps"].le == MAX_SAMPLING_STEPS
    assert PREDICT_PARAMETERS["num_inversion_steps"].le == MAX_INVERSION_STEPS


def test_descriptions_state_the_limits_the_engine_enforces():
    assert f"at most {MAX_PROMPTS}" in PREDICT_PARAMETERS["translation_prompts"].description
    inversion = PREDICT_PARAMETERS["num_inversion_steps"].description
    for values in describe_ranges(valid_inversion_steps(PREDICT_PARAMETERS["num_inference_steps"].default)).split(", "):
        assert values in inversion


def test_input_arguments_are_literals_that_cog_build_can_read():
    """`cog build` parses predict.py without running it and drops what is not a literal (see predict.py)."""
    source = LocalPath(predict.__file__).read_text()
    method = next(
        node for node in ast.walk(ast.parse(source)) if isinstance(node, ast.FunctionDef) and node.name == "predict"
    )
    calls = [d for d in method.args.defaults if isinstance(d, ast.Call)]
    assert len(calls) == len(FORM_ORDER)
    for call in calls:
        for keyword in call.keywords:
            value = keyword.value
            if keyword.arg == "choices":
                assert isinstance(value, ast.List) and all(isinstance(e, ast.Constant) for e in value.elts)
            else:
                assert isinstance(value, ast.Constant), ast.get_source_segment(source, value)
            if keyword.arg == "description":
                # The parser takes the text between the quotes as it is: no escapes, no joined strings.
                assert ast.get_source_segment(source, value) == f'"{value.value}"'


# --- Predictions ---


def test_image_mode_keeps_the_input_size(predictor, photo_file, outputs_root):
    [output] = run(predictor, input_image=photo_file, translation_prompts="  a photo of a cat  ")
    assert isinstance(output, Path) and output.name == "00-a-photo-of-a-cat.png"
    with Image.open(output) as image:
        assert (image.format, image.size) == ("PNG", (256, 128))


@pytest.fixture(scope="module")
def cat_and_dog(predictor):
    """Inputs translating the sample photo (``photo_file``) into two prompts, and their outputs' names and pixels."""
    inputs = {"translation_prompts": "a cat;; a dog ;"}
    photo = sent_as(data_uri(sample_photo()))
    try:
        outputs = run(predictor, input_image=photo, **inputs)
    finally:
        photo.unlink()
    return inputs, [p.name for p in outputs], [pixels(p) for p in outputs]


def test_resolution_0_is_the_models_own_size(predictor, photo_file, outputs_root):
    [output] = run(predictor, input_image=photo_file, resolution=0)
    with Image.open(output) as image:
        assert image.size == (256, 128)  # the 256x128 photo at the tiny model's own 128 px
    [output] = run(predictor, input_image=photo_file, resolution=192)
    with Image.open(output) as image:
        assert image.size == (384, 192)


def test_several_prompts_come_out_in_prompt_order(predictor, cat_and_dog, photo_file, outputs_root):
    inputs, names, (cat, dog) = cat_and_dog
    assert names == ["00-a-cat.png", "01-a-dog.png"]
    [alone] = run(predictor, input_image=photo_file, translation_prompts="a dog")
    # Batched and single runs may differ by rounding only; the two prompts differ far more.
    assert np.abs(pixels(alone) - dog).mean() < 0.1 * np.abs(pixels(alone) - cat).mean()


def test_feature_maps_follow_the_unchanged_translations(predictor, cat_and_dog, photo_file, outputs_root):
    inputs, names, translations = cat_and_dog  # feature_maps off: the translations alone
    assert names == ["00-a-cat.png", "01-a-dog.png"]
    outputs = run(predictor, input_image=photo_file, **inputs, feature_maps=True)
    grids = [
        "up-blocks-1-resnets-1-conv1",
        "up-blocks-1-resnets-1-conv2",
        *(f"up-blocks-1-attentions-1-transformer-blocks-0-attn1-{part}" for part in ("to-q", "to-k", "attention")),
    ]
    assert [p.name for p in outputs] == [*names, *(f"{i + 2:02d}-features-{grid}.png" for i, grid in enumerate(grids))]
    assert all(np.array_equal(pixels(p), t) for p, t in zip(outputs[:2], translations, strict=True))
    with Image.open(outputs[-1]) as grid:
        assert grid.width > 3 * 256 and grid.height > 3 * 128  # the image and two timesteps, for three rows


@pytest.mark.parametrize("output_format, pil_format", [("png", "PNG"), ("webp", "WEBP"), ("jpg", "JPEG")])
def test_generation_mode_returns_the_source_first(predictor, outputs_root, output_format, pil_format):
    outputs = run(
        predictor,
        generation_prompt="a house",
        translation_prompts="a castle; a tent",
        seed=3,
        output_format=output_format,
    )
    assert [p.name for p in outputs] == [
        f"00-source.{output_format}",
        f"01-a-castle.{output_format}",
        f"02-a-tent.{output_format}",
    ]
    for path in outputs:
        with Image.open(path) as image:
            assert (image.format, image.size) == (pil_format, (128, 128))


def test_output_quality_applies_to_lossy_formats(predictor, photo_file, outputs_root):
    sizes = {}
    for quality in (5, 95):
        [output] = run(predictor, input_image=photo_file, output_format="jpg", output_quality=quality)
        sizes[quality] = output.stat().st_size
    assert sizes[5] < sizes[95] / 2


def test_generation_prompt_wins_over_an_image(predictor, photo_file, outputs_root, capsys):
    outputs = run(predictor, input_image=photo_file, generation_prompt="a house", translation_prompts="a castle")
    assert [p.name for p in outputs] == ["00-source.png", "01-a-castle.png"]
    with Image.open(outputs[0]) as source:
        assert source.size == (128, 128)  # square like every generated source, not the input's 256x128
    assert "image is ignored" in capsys.readouterr().out


def test_seed_fixed_reproduces_blank_is_random_and_logged(predictor, outputs_root, capsys):
    def source(seed):
        return pixels(run(predictor, generation_prompt="a house", translation_prompts="a castle", seed=seed)[0])

    first, second = source(None), source(None)
    seeds = [int(line.split()[-1]) for line in capsys.readouterr().out.splitlines() if "random seed" in line]
    assert len(seeds) == 2 and seeds[0] != seeds[1]
    assert not np.array_equal(first, second)
    assert np.array_equal(source(seeds[0]), first)
    assert f"with seed {seeds[0]}" in capsys.readouterr().out


@pytest.mark.parametrize(
    "inputs, form_name, hint",
    [
        ({}, "input_image", "generation prompt"),
        ({"generation_prompt": "a house", "translation_prompts": " ; ;"}, "translation_prompts", "at least one"),
        (
            {"generation_prompt": "a house", "translation_prompts": ";".join(["a cat"] * (MAX_PROMPTS + 1))},
            "translation_prompts",
            f"at most {MAX_PROMPTS}",
        ),
        ({"input_image": "photo", "num_inversion_steps": 3}, "num_inversion_steps", "with 2 sampling steps"),
        ({"input_image": "photo", "num_inference_steps": 30}, "num_inversion_steps", "with 30 sampling steps"),
        ({"generation_prompt": "a house", "num_inference_steps": 1000}, "num_inference_steps", "1 to 999"),
        ({"generation_prompt": "a house", "scale": 60.0}, "scale", "0 to 50"),
        ({"generation_prompt": "a house", "resolution": 500}, "resolution", "multiple of 64"),
        ({"generation_prompt": "a house", "output_format": "gif"}, "output_format", "png"),
        ({"generation_prompt": "a house", "negative_prompt_schedule": "cubic"}, "negative_prompt_schedule", "linear"),
    ],
)
def test_bad_inputs_name_the_input_to_change(predictor, outputs_root, photo_file, inputs, form_name, hint):
    if inputs.get("input_image") == "photo":
        inputs = {**inputs, "input_image": photo_file}
    with pytest.raises(ConfigError) as caught:
        run(predictor, **inputs)
    message = str(caught.value)
    assert caught.value.param == form_name
    assert message.startswith(f"{form_name}:") and hint in message
    assert output_folders(outputs_root) == []


def test_whole_numbers_sent_as_floats_count_as_integers(predictor, outputs_root):
    """JSON's 2.0 passes the server's integer schema and arrives as a float (see cog_inputs.py)."""
    integers = {"num_inference_steps": 2, "num_inversion_steps": 2, "seed": 3, "resolution": 128, "output_quality": 40}
    assert sorted(integers) == sorted(INTEGER_INPUTS)  # a new integer input belongs here too

    def output_bytes(values):
        [source, output] = run(predictor, generation_prompt="a house", output_format="jpg", **values)
        return source.read_bytes(), output.read_bytes()

    assert output_bytes({name: float(value) for name, value in integers.items()}) == output_bytes(integers)
    with pytest.raises(ConfigError, match="^num_inference_steps: expected a whole number, got 2.5"):
        run(predictor, generation_prompt="a house", num_inference_steps=2.5)


@pytest.mark.parametrize(
    "where",
    [
        "str of a file",
        "str of no file",
        "Path of a file",
        "str of a Cog-like file",
        "Cog-like file in a subfolder",
        "relative Path",
        "file: URL",
    ],
)
def test_only_files_the_request_brought_are_read(predictor, tmp_path, outputs_root, where):
    """Cog hands predict() a plain str for anything but a URL or data URI, and URL/data-URI files only in its
    temporary folder under NamedTemporaryFile's names; any other value is refused the same way, file or not."""
    photo = tmp_path / "photo.png"
    sample_photo().save(photo)
    lookalike = outputs_root / "tmpabcdefghphoto.png"  # where and how Cog names an upload
    sample_photo().save(lookalike)
    nested = outputs_root / "sub"
    nested.mkdir()
    sample_photo().save(nested / "tmpabcdefghphoto.png")
    value = {
        "str of a file": str(photo),
        "str of no file": str(tmp_path / "missing.png"),
        "Path of a file": Path(photo),
        "str of a Cog-like file": str(lookalike),
        "Cog-like file in a subfolder": Path(nested / "tmpabcdefghphoto.png"),
        "relative Path": Path("tmpabcdefghphoto.png"),
        "file: URL": f"file://{lookalike}",
    }[where]
    with pytest.raises(ImageError) as caught:
        run(predictor, input_image=value)
    assert str(caught.value) == REFUSED
    assert output_folders(outputs_root) == [nested]


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: sent_as("data:text/plain;base64,aGVsbG8="), "the uploaded file is not a readable image"),
        (
            lambda: sent_as("data:image/png;base64,@@@"),
            "the uploaded file is empty: no bytes arrived (with a data: URI, check its base64)",
        ),
        (
            lambda: fetched_from("https://example.com/albums/notes.txt?size=large", b"hello"),
            "notes.txt is not a readable image",
        ),
        (lambda: fetched_from("https://example.com/my%20horse.png", b"hello"), "my horse.png is not a readable image"),
        (
            lambda: fetched_from("https://example.com/empty.png", b""),
            "empty.png is empty: no bytes arrived (with a data: URI, check its base64)",
        ),
        # Names are repeated without line breaks or markup (cog_inputs.display_name), and cut to 100 characters.
        (
            lambda: fetched_from("https://example.com/x%0D%0AInjected:%20line.png", b"hello"),
            "x__Injected_ line.png is not a readable image",
        ),
        (
            lambda: fetched_from("https://example.com/%3Cscript%3Ealert(1)%3C%2Fscript%3E.png", b"hello"),
            "_script_alert(1)__script_.png is not a readable image",
        ),
        (
            lambda: fetched_from(f"https://example.com/{'a' * 150}.png", b"hello"),
            f"{'a' * 72}...{'a' * 21}.png is not a readable image",
        ),
    ],
)
def test_unreadable_files_are_named_as_the_user_sent_them(predictor, outputs_root, make, message):
    with pytest.raises(ImageError) as caught:
        run(predictor, input_image=make())
    assert str(caught.value) == f"input_image: {message}"
    assert output_folders(outputs_root) == []


def test_urls_whose_scheme_is_not_lower_case_are_fetched_as_cog_fetches_urls(predictor, outputs_root):
    """The server hands on "DATA:..." and "HTTP://..." as text (schemes are case-insensitive): predict() fetches them
    into files like Cog's, and deletes them when the prediction ends (tests/test_cog_server.py: over HTTP)."""
    upper = "DATA" + data_uri(sample_photo())[len("data") :]
    [output] = run(predictor, input_image=upper)
    with Image.open(output) as image:
        assert image.size == (256, 128)
    assert output_folders(outputs_root) == [output.parent] and len(list(outputs_root.iterdir())) == 1
    with pytest.raises(ImageError) as caught:
        run(predictor, input_image="Data:image/png;base64,abc")
    assert str(caught.value) == "input_image: the uploaded file could not be fetched: Incorrect padding"
    assert list(outputs_root.iterdir()) == []


def test_an_overly_long_image_is_refused(predictor, outputs_root):
    with pytest.raises(ImageError, match="^input_image: .*crop"):
        run(predictor, input_image=sent_as(data_uri(Image.new("RGB", (1100, 100)))))
    assert output_folders(outputs_root) == []


class _Interrupt:
    """A UNet forward hook that raises ``error`` on the ``at``-th call, as a cancellation would arrive."""

    def __init__(self, error: BaseException, at: int) -> None:
        self.error, self.at, self.calls = error, at, 0

    def __call__(self, module, args, output):
        self.calls += 1
        if self.calls == self.at:
            raise self.error


@pytest.mark.parametrize("error", [CancelationException("canceled"), RuntimeError("CUDA out of memory")])
def test_interrupted_predictions_leave_the_model_clean(predictor, cat_and_dog, photo_file, outputs_root, error):
    unet = predictor.pipe.unet
    processors = {name: type(p) for name, p in unet.attn_processors.items()}
    prompts, _, before = cat_and_dog
    inputs = {**prompts, "input_image": photo_file}
    run(predictor, **inputs)  # outputs of an earlier prediction, which the failing one must remove too

    handle = unet.register_forward_hook(_Interrupt(error, at=3))
    try:
        with pytest.raises(type(error)):
            run(predictor, **inputs)
    finally:
        handle.remove()
    assert output_folders(outputs_root) == []  # neither these outputs nor the previous prediction's
    assert all_hooks(unet) == []
    assert {name: type(p) for name, p in unet.attn_processors.items()} == processors

    after = [pixels(p) for p in run(predictor, **inputs)]
    assert all(np.array_equal(a, b) for a, b in zip(before, after))


def test_each_prediction_removes_the_previous_outputs(predictor, photo_file, outputs_root):
    [first] = run(predictor, input_image=photo_file)
    [second] = run(predictor, input_image=photo_file)
    assert not first.exists() and second.exists()
    assert output_folders(outputs_root) == [second.parent]


# --- Setup ---


def test_setup_logs_what_it_loaded(tiny_model_dir, monkeypatch, capsys):
    monkeypatch.setenv("PNP_WEIGHTS", str(tiny_model_dir))
    monkeypatch.setenv("PNP_DEVICE", "cpu")
    monkeypatch.setenv("PNP_DTYPE", "bfloat16")
    model = Predictor()
    model.setup()
    assert model.pipe.unet.dtype == torch.bfloat16 and model.pipe.device.type == "cpu"
    lines = capsys.readouterr().out.strip().splitlines()
    [line] = [line for line in lines if line.startswith("Loaded ")]
    assert str(tiny_model_dir) in line and "cpu" in line and "bfloat16" in line and line.endswith(" s")
    assert "Safety checker: absent from the weights" in lines


def test_setup_refuses_a_missing_weights_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("PNP_WEIGHTS", str(tmp_path / "nowhere"))
    with pytest.raises(ModelError, match="PNP_WEIGHTS"):
        Predictor().setup()


@pytest.mark.parametrize(
    "name, value, reason",
    [
        ("PNP_DEVICE", "cuda", "cuda was asked for but no CUDA GPU is available; use cpu"),
        ("PNP_DTYPE", "float8", "'float8' is not one of float32, float16, bfloat16"),
    ],
)
def test_setup_names_the_environment_variable_to_change(tiny_model_dir, monkeypatch, name, value, reason):
    """The engine's rule says "device"; the server's setup log speaks of the variable that set it (not --device)."""
    monkeypatch.setenv("PNP_WEIGHTS", str(tiny_model_dir))
    monkeypatch.setenv(name, value)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(ConfigError) as caught:
        Predictor().setup()
    assert str(caught.value) == f"{name}: {reason}"


def test_setup_offline_without_weights_says_how_to_supply_them(tmp_path, monkeypatch):
    monkeypatch.delenv("PNP_WEIGHTS", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)  # read once, at import
    monkeypatch.setattr(predict, "WEIGHTS_DIR", tmp_path / "weights")
    with pytest.raises(ModelError) as caught:
        Predictor().setup()
    message = str(caught.value)
    assert "python -m pnp download-weights" in message and "PNP_WEIGHTS" in message
    assert not (tmp_path / "weights").exists()


# --- Safety checker ---


@pytest.fixture(scope="module")
def checked_predictor(tmp_path_factory, tiny_model_dir):
    """A predictor whose weights include a tiny safety checker that flags every image."""
    from pnp.pipelines.pipeline_pnp import PnPPipeline
    from support.models import build_random_safety_checker

    checker, extractor = build_random_safety_checker()
    with torch.no_grad():
        checker.concept_embeds_weights[:] = -1.0  # a cosine is never below -1: every image is flagged
    base = PnPPipeline.from_pretrained(tiny_model_dir, device="cpu", dtype="float32")
    folder = tmp_path_factory.mktemp("weights") / "with-checker"
    PnPPipeline.from_pipe(
        base, safety_checker=checker, feature_extractor=extractor, dtype=torch.float32
    ).save_pretrained(folder)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PNP_WEIGHTS", str(folder))
        mp.setenv("PNP_DEVICE", "cpu")
        mp.setenv("PNP_DTYPE", "float32")
        model = Predictor()
        model.setup()
    return model


def test_flagged_outputs_are_black_and_logged_unless_the_checker_is_disabled(
    checked_predictor, photo_file, outputs_root, capsys
):
    inputs = dict(input_image=photo_file, translation_prompts="a cat; a dog")
    outputs = run(checked_predictor, **inputs)
    assert [pixels(p).max() for p in outputs] == [0, 0]
    log = capsys.readouterr().out
    assert "flagged output 1 ('a cat')" in log and "flagged output 2 ('a dog')" in log
    unchecked = run(checked_predictor, disable_safety_checker=True, **inputs)
    assert all(pixels(p).max() > 0 for p in unchecked)
    assert "flagged" not in capsys.readouterr().out
    assert checked_predictor.pipe.safety_checker is not None  # turning it off for one prediction leaves it on
    assert checked_predictor.pipe.unet.dtype == torch.float32


# --- Source cache ---


def test_repeated_sources_come_from_the_cache(tiny_model_dir, photo_file, outputs_root, capsys, monkeypatch):
    monkeypatch.setenv("PNP_WEIGHTS", str(tiny_model_dir))
    monkeypatch.setenv("PNP_DEVICE", "cpu")
    monkeypatch.setenv("PNP_DTYPE", "float32")
    monkeypatch.delenv("PNP_SOURCE_CACHE_BYTES", raising=False)
    model = Predictor()
    model.setup()
    recorded = []
    monkeypatch.setattr(
        predict,
        "current_scope",
        lambda: type(
            "Scope", (), {"record_metric": staticmethod(lambda name, value: recorded.append((name, value)))}
        )(),
    )
    run(model, input_image=photo_file, translation_prompts="a cat")
    run(model, input_image=photo_file, translation_prompts="a dog")
    log = capsys.readouterr().out
    assert log.count("from the source cache") == 1
    hits = [value for name, value in recorded if name == "cache_hits"]
    rows = [value for name, value in recorded if name == "unet_rows"]
    assert hits == [0, 1]
    # 2 inversion steps; then 2 translation steps of [uncond, cond], the first (int(2 * 0.8) = 1 step
    # inside the injection windows) with the source row too. A hit skips the inversion and the source row.
    assert rows == [2 + 3 + 2, 2 + 2]


def test_a_bad_cache_size_names_the_variable(tiny_model_dir, monkeypatch):
    monkeypatch.setenv("PNP_WEIGHTS", str(tiny_model_dir))
    monkeypatch.setenv("PNP_DEVICE", "cpu")
    monkeypatch.setenv("PNP_SOURCE_CACHE_BYTES", "2GB")
    with pytest.raises(ValueError, match="^PNP_SOURCE_CACHE_BYTES='2GB' is not a whole number"):
        Predictor().setup()
