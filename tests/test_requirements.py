"""Which requirements file holds what: the Cog image installs requirements.txt only, so the web UI's Gradio stays out of it."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
UI_ONLY = ("gradio", "playwright")


def requirements(name: str) -> dict[str, str]:
    """Package -> version pin of a requirements file, following its ``-r`` includes."""
    pins = {}
    for line in (ROOT / name).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line.startswith("-r "):
            pins.update(requirements(line[3:].strip()))
        elif line:
            package, version = re.fullmatch(r"([A-Za-z0-9_.-]+)==(\S+)", line).groups()
            pins[package.lower()] = version
    return pins


def test_the_cog_image_gets_no_web_ui_packages():
    image = requirements("requirements.txt")
    assert not set(UI_ONLY) & set(image), "the Cog image installs requirements.txt; keep Gradio in requirements-ui.txt"


def test_the_ui_and_the_tests_install_gradio_pinned_on_the_package_requirements():
    ui, dev, image = (requirements(f) for f in ("requirements-ui.txt", "requirements-dev.txt", "requirements.txt"))
    assert "gradio" in ui and image.items() <= ui.items()
    assert ui.items() <= dev.items() and "playwright" in dev
