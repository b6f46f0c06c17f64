"""Calling the Cog predictor in-process as the Cog server does, and the files the server makes of request inputs."""

import inspect
import io

from cog import Path
from cog.types import URLPath, get_filename

from predict import Predictor
from support.cog_server import FAST

# Every input of predict() and its Input() field, in form order.
PREDICT_PARAMETERS = {
    name: p.default for name, p in inspect.signature(Predictor.predict).parameters.items() if name != "self"
}


def run(model, **inputs):
    """Call predict() as Cog does: every input given, defaults for those not in ``inputs``."""
    values = {name: field.default for name, field in PREDICT_PARAMETERS.items()}
    values.update(FAST)
    values.update(inputs)
    return model.predict(**values)


def sent_as(uri: str) -> Path:
    """The file the Cog server makes of a data: URI given for a Path input: cog.types' own code, as coglet calls it."""
    return Path.validate(uri).convert()


def fetched_from(url: str, data: bytes) -> Path:
    """The file the Cog server makes of an http(s) URL that serves ``data``: Cog's code, without the network."""
    return URLPath(source=url, filename=get_filename(url), fileobj=io.BytesIO(data)).convert()
