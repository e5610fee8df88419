"""The `hovernet` command line: one small module per command under hovernet/cli/.

Each command module defines `register(app: typer.Typer) -> None`. Command modules import heavy
libraries (torch, OpenCV) inside their command functions so that `hovernet --help` stays fast.
"""

from __future__ import annotations

import importlib
import sys

import typer

from hovernet.errors import HoverNetError

# module names under hovernet.cli, in the order they appear in --help
COMMAND_MODULES = ["convert", "extract", "view_dataset", "infer", "export_onnx", "stats"]


def build_app() -> typer.Typer:
    app = typer.Typer(
        name="hovernet",
        help="HoVer-Net nucleus segmentation and classification.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )
    for name in COMMAND_MODULES:
        importlib.import_module(f"hovernet.cli.{name}").register(app)
    return app


def main(argv: list[str] | None = None) -> None:
    app = build_app()
    try:
        app(args=argv)
    except HoverNetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
