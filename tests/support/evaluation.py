"""``pnp evaluate`` in this process on given models, as the evaluation tests run it."""

from pnp.app.cli import main


def run_evaluate(benchmark, out, model, clip_model, dino_model, *extra) -> int:
    """``pnp evaluate BENCHMARK --out OUT`` with these translation and metric models; ``extra``: more flags."""
    models = ["--model", str(model), "--clip-model", str(clip_model), "--dino-model", str(dino_model)]
    return main(["evaluate", str(benchmark), "--out", str(out), *models, *extra])
