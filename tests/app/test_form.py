"""The form table (pnp.app.form) is what predict.py's Input() literals say, so the predictor and the web UI cannot drift.

predict.py is read as cog build reads it, by parsing its source, not by importing it.
"""

import ast

import pytest

from pnp.app.form import FORM_INPUTS, KINDS, form_input, form_name
from support.paths import ROOT

PREDICT = ROOT / "predict.py"
# The annotation of each kind of input (images and other files are both cog Paths).
KIND_ANNOTATIONS = {"image": "Path", "file": "Path", "text": "str", "int": "int", "float": "float", "bool": "bool"}


def predictor_inputs() -> list[dict]:
    """Each parameter of Predictor.predict as cog build sees it: name, annotation, optional, and the Input() keywords."""
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
        fields = {"name": spec.name, "annotation": KIND_ANNOTATIONS[spec.kind], "optional": spec.optional, "default": spec.default,
                  "description": spec.description}
        fields.update({k: getattr(spec, k) for k in ("ge", "le") if getattr(spec, k) is not None})
        if spec.choices is not None:
            fields["choices"] = list(spec.choices)
        expected.append(fields)
    assert predictor_inputs() == expected


def test_error_names_are_the_forms():
    renamed = {spec.param: spec.name for spec in FORM_INPUTS if spec.param != spec.name}
    assert renamed == {"image": "input_image", "prompt": "translation_prompts", "guidance_scale": "scale",
                       "generation_guidance_scale": "generation_scale"}
    assert form_name("guidance_scale") == "scale" and form_name("prompt") == "translation_prompts"
    assert form_name("max_batch_size") == "max_batch_size"  # not on the form: named as the pipeline names it


def test_kinds_and_lookup():
    assert {spec.kind for spec in FORM_INPUTS} <= set(KINDS)
    assert form_input("seed").optional and not form_input("scale").optional
    with pytest.raises(KeyError):
        form_input("strength")

