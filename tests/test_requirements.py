"""What is installed where: the Cog image installs requirements.txt only, so the web UI's Gradio stays out of it;
what `cog build` makes of them with cog.yaml; and README's Test section installs what CI's script does."""

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
UI_ONLY = ("gradio", "playwright")
# The CUDA (major.minor) that torch's default wheels on PyPI for Linux x86_64 are built for: the
# cuda-toolkit==X.Y.Z requirement in the wheel's metadata, which the command in docs/cog.md ("With the
# `cog` command") prints. A new torch pin needs its line here, looked up with that command.
TORCH_WHEEL_CUDA = {"2.13.0": "13.0"}


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


def cog_build_problems(build: dict, pins: dict[str, str]) -> list[str]:
    """What stops `cog build` from making a GPU image for the pinned torch, or makes it pick the wrong CUDA.

    Without `cuda`, Cog looks torch's version up in a table of its own, which ends at 2.11 in the
    latest Cog read (replicate/cog pkg/config/torch_compatibility.json), and stops for a newer one.
    Cog's config schema wants the value as a string, and validateCudaVersion wants major.minor.
    """
    torch = pins.get("torch")
    if not build.get("gpu") or torch is None:
        return []
    cuda = build.get("cuda")
    if cuda is None:
        return [f"gpu: true with torch=={torch} pinned needs cuda: Cog cannot derive it from a torch it does not know"]
    if not isinstance(cuda, str) or not re.fullmatch(r"\d+\.\d+", cuda):
        return [f'cuda: {cuda!r} must be a quoted major.minor version, e.g. "13.0"']
    if torch not in TORCH_WHEEL_CUDA:
        return [
            f"torch=={torch}: look up the CUDA its PyPI wheels are built for (docs/cog.md) and add it to "
            "TORCH_WHEEL_CUDA"
        ]
    if cuda != TORCH_WHEEL_CUDA[torch]:
        return [f"cuda: {cuda!r}, but torch=={torch}'s PyPI wheels are built for CUDA {TORCH_WHEEL_CUDA[torch]}"]
    return []


def test_cog_yaml_names_the_cuda_of_the_pinned_torch():
    build = yaml.safe_load((ROOT / "cog.yaml").read_text())["build"]
    pins = requirements("requirements.txt")
    assert build["gpu"] is True and "torch" in pins  # what the checks below are about
    assert cog_build_problems(build, pins) == []


@pytest.mark.parametrize(
    "change, problem",
    [
        ({"cuda": None}, "needs cuda"),
        ({"cuda": 13.0}, "quoted major.minor"),  # YAML's unquoted 13.0 is a float
        ({"cuda": "13"}, "quoted major.minor"),
        ({"cuda": "12.8"}, "built for CUDA 13.0"),
        ({"torch": "2.99.0"}, "add it to TORCH_WHEEL_CUDA"),
    ],
)
def test_cog_build_problems_are_found(change, problem):
    build = yaml.safe_load((ROOT / "cog.yaml").read_text())["build"]
    pins = requirements("requirements.txt")
    if "cuda" in change:
        build = {k: v for k, v in {**build, "cuda": change["cuda"]}.items() if v is not None}
    if "torch" in change:
        pins = {**pins, "torch": change["torch"]}
    [found] = cog_build_problems(build, pins)
    assert problem in found
    assert cog_build_problems({**build, "gpu": False}, pins) == []


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
            words = [
                w
                for w in step.split()
                if w not in ("sudo", "--quiet", "-q", "-qq", ">/dev/null") and not w.startswith("DEBIAN_FRONTEND=")
            ]
            steps.append(" ".join(words).replace("python -m pip ", "pip ").replace(".venv-ci", ".venv"))
    return steps


def test_the_readmes_test_section_installs_what_ci_does():
    """Whoever follows README's Test section gets what `.ci/run` installs, chromium for the browser tests included."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("\n## Test\n") :]
    start = section.index("```bash\n") + len("```bash\n")
    block = section[start : section.index("```", start)]
    ci = setup_steps((ROOT / ".ci" / "run").read_text())
    assert setup_steps(block) == ci
    assert "apt-get install -y chromium" in ci and ci[-1] == "python -m pytest -n 2 --dist loadfile"
