"""`python -m pnp ui`: what it refuses before the slow model load (the page itself: test_ui_browser.py)."""

import importlib.util
import socket

import pytest

from pnp.app import cli


@pytest.fixture(autouse=True)
def no_model(monkeypatch):
    """A check that lets a bad request through would load the model and serve forever: fail instead."""

    def load(args):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(cli, "load_pipeline", load)


def test_a_port_in_use_is_refused_before_the_model_loads(capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert cli.main(["ui", "--model", "tiny", "--port", str(port)]) == cli.EXIT_USAGE
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"error: --port: cannot serve on 127.0.0.1:{port} (") and "choose another --port" in line


@pytest.mark.parametrize("port", ["0", "65536"])
def test_a_port_out_of_range_is_refused(port, capsys):
    assert cli.main(["ui", "--port", port]) == cli.EXIT_USAGE
    assert capsys.readouterr().err == f"error: --port: {port} is not a port number; use one from 1 to 65535\n"


def test_without_gradio_it_says_what_to_install(monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gradio" else real(name, *a))
    assert cli.main(["ui"]) == cli.EXIT_USAGE
    assert capsys.readouterr().err == "error: the web UI needs Gradio: pip install -r requirements-ui.txt\n"


def test_defaults_serve_this_machine_only_without_a_share_link():
    args = cli._parser().parse_args(["ui"])
    assert (args.host, args.port, args.share, args.model) == ("127.0.0.1", 7860, False, cli.DEFAULT_MODEL)
