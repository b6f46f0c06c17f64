"""How pnp sets up the libraries it uses (diffusers, transformers) and where its own log messages go.

Entry points (the command line, the predictor, the benchmark, the tests) call ``configure_libraries``
before they import a model library, and ``log_to`` to show pnp's warnings to their user.
"""

from __future__ import annotations

import logging
import os
import sys

LOGGER = "pnp"


def configure_libraries() -> None:
    """Keep diffusers' and transformers' load-time progress bars and advice out of the user's output; errors stay.

    transformers reads TRANSFORMERS_VERBOSITY when it is first imported (it otherwise warns about
    optional image backends pnp never uses), so call this before importing it where you can.
    """
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    for library in (diffusers_logging, transformers_logging):
        library.set_verbosity_error()
        library.disable_progress_bar()


def log_to(stream: str = "stderr") -> None:
    """Send pnp's informational messages and warnings to sys.stderr or sys.stdout, one line each: "warning: ..."."""
    logger = logging.getLogger(LOGGER)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    handler = _StandardStream(stream)
    handler.setFormatter(_LevelFormatter())
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


class _StandardStream(logging.StreamHandler):
    """A handler writing to whatever ``sys.<name>`` is when a message comes: Cog and test runners replace it."""

    def __init__(self, name: str) -> None:
        logging.Handler.__init__(self)
        self.stream_name = name

    @property
    def stream(self):
        return getattr(sys, self.stream_name)


class _LevelFormatter(logging.Formatter):
    """ "warning: the message", in the command line's lower-case style."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {record.getMessage()}"
