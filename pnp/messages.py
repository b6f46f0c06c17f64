"""How pnp words what it tells people: errors in one line, counts with their nouns. Torch-free."""

from __future__ import annotations


def first_line(err: BaseException) -> str:
    """The first line of an error's message, or its type's name if it has none."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def plural(n: int, noun: str) -> str:
    """``n`` and ``noun``, in the plural unless n is 1: "1 source", "2 sources"."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
