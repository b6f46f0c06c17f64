"""The local evaluation backend translates real images that share their prompts in shared UNet calls."""

from pathlib import Path

import numpy as np
from PIL import Image

from pnp.config import PnPConfig
from pnp.evaluation.backends import make_job
from pnp.evaluation.benchmarks import Generation, Source
from pnp.evaluation.local import LocalBackend, batches

BASE = PnPConfig(prompt="unused", num_inference_steps=3, resolution=128)


def sources(tmp_path: Path, photo) -> list[Source]:
    photo.save(tmp_path / "a.png")
    photo.rotate(180).save(tmp_path / "b.png")
    photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(tmp_path / "c.png")
    shared = ("a cat", "a dog")
    return [
        Source("a", shared, tmp_path / "a.png"),
        Source("b", shared, tmp_path / "b.png"),
        Source("c", ("a bird",), tmp_path / "c.png"),
        Source("g", shared, generation=Generation("a house", 1, 5.0, 3)),
    ]


def test_runs_of_images_with_equal_settings_are_batched(tmp_path, photo):
    jobs = [make_job(source, BASE) for source in sources(tmp_path, photo)]
    assert [[job.source.key for job in batch] for batch in batches(jobs, 4)] == [["a", "b"], ["c"], ["g"]]
    assert [[job.source.key for job in batch] for batch in batches(jobs, 1)] == [["a"], ["b"], ["c"], ["g"]]


def test_batched_translations_equal_one_image_at_a_time(tmp_path, photo, pipe):
    jobs = [make_job(source, BASE) for source in sources(tmp_path, photo)[:2]]
    calls = []
    handle = pipe.unet.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    try:
        together = {t.job.source.key: t.outputs for t in LocalBackend(pipe, 4).translate(jobs)}
    finally:
        handle.remove()
    assert calls[:3] == [2, 2, 2]  # both images inverted in the same calls
    alone = {t.job.source.key: t.outputs for t in LocalBackend(pipe, 1).translate(jobs)}
    for key in ("a", "b"):
        for ours, theirs in zip(together[key], alone[key], strict=True):
            # Batch composition moves float32 sums: the 8-bit pixels may differ by one level.
            assert np.abs(np.asarray(ours, float) - np.asarray(theirs, float)).max() <= 1
