"""The form table (pnp.app.form) is what predict.py's Input() literals say, so the predictor and the web UI cannot
drift.

predict.py is read as cog build reads it, by parsing its source, not by importing it.
"""

import ast

import pytest

from pnp.app.form import FORM_INPUTS, KINDS, form_input, form_inputs, form_name, parse_form, split_prompts, whole_number
from pnp.config import ConfigError, PnPConfig
from support.paths import ROOT

PREDICT = ROOT / "predict.py"
# The annotation of each kind of input (images and other files are both cog Paths).
KIND_ANNOTATIONS = {"image": "Path", "file": "Path", "text": "str", "int": "int", "float": "float", "bool": "bool"}


def predictor_inputs() -> list[dict]:
    """Each parameter of Predictor.predict as cog build sees it: name, annotation, optional, and the Input()
    keywords."""
    tree = ast.parse(PREDICT.read_text())
    method = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "predict")
    inputs = []
    for arg, default in zip(method.args.args[1:], method.args.defaults, strict=True):
        annotation = arg.annotation
        optional = isinstance(annotation, ast.Subscript) and ast.unparse(annotation.value) == "Optional"
        inner = annotation.slice if optional else annotation
        fields = {k.arg: ast.literal_eval(k.value) for k in default.keywords}
        inputs.append({"name": arg.arg, "annotation": ast.unparse(inner), "optional": optional, **fields})
    return inputs


def test_the_table_is_the_predictors_form_literal_for_literal():
    expected = []
    for spec in FORM_INPUTS:
        fields = {
            "name": spec.name,
            "annotation": KIND_ANNOTATIONS[spec.kind],
            "optional": spec.optional,
            "default": spec.default,
            "description": spec.description,
        }
        fields.update({k: getattr(spec, k) for k in ("ge", "le") if getattr(spec, k) is not None})
        if spec.choices is not None:
            fields["choices"] = list(spec.choices)
        expected.append(fields)
    assert predictor_inputs() == expected


def test_error_names_are_the_forms():
    renamed = {spec.param: spec.name for spec in FORM_INPUTS if spec.param != spec.name}
    assert renamed == {
        "image": "input_image",
        "prompt": "translation_prompts",
        "guidance_scale": "scale",
        "generation_guidance_scale": "generation_scale",
    }
    assert form_name("guidance_scale") == "scale" and form_name("prompt") == "translation_prompts"
    assert form_name("max_batch_size") == "max_batch_size"  # not on the form: named as the pipeline names it


def test_kinds_and_lookup():
    assert {spec.kind for spec in FORM_INPUTS} <= set(KINDS)
    assert form_input("seed").optional and not form_input("scale").optional
    with pytest.raises(KeyError):
        form_input("strength")


# --- The one parser of both forms ---


def test_prompts_are_separated_by_semicolons_or_line_breaks():
    """Replicate's form separates prompts with ';' (as the public model of the method does), a text box with lines."""
    assert split_prompts(" a cat; a dog \n a bird\n\n;") == [" a cat", " a dog ", " a bird"]
    assert split_prompts("a cat") == ["a cat"]


def test_whole_numbers_come_as_floats_or_text():
    assert [whole_number(v) for v in (2.0, " 3 ", "+4", "", "  ", None, 2.5, "2.5", True)] == [
        2,
        3,
        4,
        None,
        None,
        None,
        2.5,
        "2.5",
        True,
    ]


def test_the_parser_reads_a_form_left_at_its_defaults_but_a_generation_prompt():
    request = parse_form({"generation_prompt": "a house", "seed": "7"}, 512, lambda *_: None)
    defaults = PnPConfig(generation_prompt="a house").resolved(512)
    assert request.config == defaults and request.seed == 7 and request.lora_scale == 0.6
    assert not request.feature_maps and not request.disable_safety_checker
    assert request.notes == ("The source image is generated with seed 7",)


def test_the_parser_reads_the_image_with_the_function_it_is_given():
    seen = []
    request = parse_form(
        {"input_image": "photo.png", "resolution": "256"}, 512, lambda *args: seen.append(args) or "read"
    )
    assert seen == [("photo.png", 256)] and request.image == "read"


@pytest.mark.parametrize(
    "values, name",
    [
        ({"generation_prompt": 3}, "generation_prompt"),
        ({"generation_prompt": "a house", "feature_maps": "yes"}, "feature_maps"),
        ({"generation_prompt": "a house", "lora_scale": 1.5}, "lora_scale"),
        ({"generation_prompt": "a house", "scale": 51.0}, "scale"),
    ],
)
def test_the_parser_names_the_input_to_change(values, name):
    with pytest.raises(ConfigError) as caught:
        parse_form(values, 512, lambda *_: None)
    assert caught.value.param == name


def test_prompts_with_a_separator_cannot_go_to_a_server():
    assert form_inputs(PnPConfig(prompt=["a cat", "a dog"]), 1)["translation_prompts"] == "a cat; a dog"
    for prompt in ("a cat; a dog", "a cat\na dog"):
        with pytest.raises(ConfigError, match="';' or a line break"):
            form_inputs(PnPConfig(prompt=[prompt]), 1)
