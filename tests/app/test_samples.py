"""The web UI's examples: the right set for the model, and toy samples that are what their prompts start from."""

import pytest
from PIL import Image

from pnp.app.samples import PHOTO_EXAMPLES, TOY_EXAMPLES, examples_for, write_samples
from pnp.pipelines.loading import TOY_MODEL
from pnp.toy.scorer import read
from pnp.toy.world import SHAPE_COLOURS, SHAPES, VOCABULARY


def test_the_toy_model_gets_its_own_world_and_every_other_model_the_drawings():
    assert examples_for(TOY_MODEL) is TOY_EXAMPLES
    assert examples_for("tiny") is PHOTO_EXAMPLES
    assert examples_for("runwayml/stable-diffusion-v1-5") is PHOTO_EXAMPLES


@pytest.mark.parametrize("examples", [PHOTO_EXAMPLES, TOY_EXAMPLES], ids=["photo", "toy"])
def test_every_sample_has_prompts_and_is_written_as_an_image(examples, tmp_path):
    assert set(examples.prompts) == set(examples.samples)
    paths = write_samples(tmp_path, examples)
    assert set(paths) == set(examples.samples)
    for path in paths.values():
        with Image.open(path) as image:
            assert image.mode == "RGB"


def _one_shape(caption: str) -> tuple[str, str]:
    words = caption.split()
    assert len(words) == 3 and words[0] == "a", caption
    assert words[1] in SHAPE_COLOURS and words[2] in SHAPES, caption
    return words[1], words[2]


def test_toy_examples_speak_the_toy_world_and_each_prompt_changes_one_thing(tmp_path):
    """Toy prompts in the model's vocabulary; each sample is read as one shape, and each of its prompts changes
    that shape's colour or class but not both (an edit the method can show)."""
    for name, path in write_samples(tmp_path, TOY_EXAMPLES).items():
        with Image.open(path) as image:
            (shape,) = read(image).shapes
        for prompt in TOY_EXAMPLES.prompts[name].splitlines():
            colour, kind = _one_shape(prompt)
            assert (colour == shape.colour) != (kind == shape.kind), (name, prompt)
    generation, target, _ = TOY_EXAMPLES.generation
    assert set(" ".join([generation, target]).split()) <= set(VOCABULARY)
    assert _one_shape(generation) != _one_shape(target)
