"""What is installed where: the Cog image installs requirements.txt only, so the web UI's Gradio stays out of it;
README's Test section installs what CI's script does."""

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


def setup_steps(script: str) -> list[str]:
    """The commands of a shell script or code block, one per ``&&`` step, without what only changes how they run:
    comments, sudo, quiet flags, output redirections, an ``if ...; then``/``fi`` around them, the virtual
    environment's name, ``python -m pip`` for ``pip``."""
    steps = []
    for line in script.splitlines():
        line = re.sub(r"(^|\s)#.*", "", line).strip()
        if not line or line == "fi" or line.startswith(("set ", "cd ")) or re.fullmatch(r"if .*; then", line):
            continue
        for step in line.split("&&"):
            words = [w for w in step.split() if w not in ("sudo", "--quiet", "-q", "-qq", ">/dev/null")
                     and not w.startswith("DEBIAN_FRONTEND=")]
            steps.append(" ".join(words).replace("python -m pip ", "pip ").replace(".venv-ci", ".venv"))
    return steps


def test_the_readmes_test_section_installs_what_ci_does():
    """Whoever follows README's Test section gets what `.ci/run` installs, chromium for the browser tests included."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("\n## Test\n"):]
    start = section.index("```bash\n") + len("```bash\n")
    block = section[start:section.index("```", start)]
    ci = setup_steps((ROOT / ".ci" / "run").read_text())
    assert setup_steps(block) == ci
    assert "apt-get install -y chromium" in ci and ci[-1] == "python -m pytest -n 2 --dist loadfile"
