"""The `hovernet` command line: one small module per command under hovernet/cli/.

Each command module defines `register(app: typer.Typer) -> None`. Command modules import heavy
libraries (torch, OpenCV) inside their command functions so that `hovernet --help` stays fast.

`main` turns every failure into one line on stderr: a usage error prints `error: ...` and the
command's usage line (exit 2), a HoverNetError or an OSError (unwritable output, full disk)
prints `error: ...` naming the file (exit 2), and SIGINT / SIGTERM stop the command (its
`finally` blocks end workers and remove temporary files) and print one line saying what was
finished and how to continue (exit 130 / 143). Warnings print as one `warning: ...` line.
"""

from __future__ import annotations

import contextlib
import importlib
import signal
import sys
import threading
import warnings

import typer

from hovernet.cli.options import hide_aliases, unknown_option_hint
from hovernet.errors import HoverNetError, Interrupted
from hovernet.resources import tune_process

# module names under hovernet.cli, in the order they appear in --help
COMMAND_MODULES = [
    "convert",
    "extract",
    "view_dataset",
    "train",
    "infer",
    "view",
    "cohort",
    "export_onnx",
    "stats",
]
PROG = "hovernet"


def build_app() -> typer.Typer:
    app = typer.Typer(
        name=PROG,
        help="HoVer-Net nucleus segmentation and classification.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        rich_markup_mode=None,  # plain click help: one option per line, flags without <bool>
        context_settings={"max_content_width": 80},
    )

    @app.callback()
    def main_options(
        version: bool = typer.Option(
            False,
            "--version",
            is_eager=True,
            help="Print the version and exit.",
            callback=_print_version,
        ),
    ) -> None:
        """HoVer-Net nucleus segmentation and classification."""

    for name in COMMAND_MODULES:
        importlib.import_module(f"hovernet.cli.{name}").register(app)
    return app


def _print_version(value: bool) -> None:
    if value:
        from hovernet import __version__

        print(f"{PROG} {__version__}")
        raise typer.Exit(0)


def _format_warning(message, category, filename, lineno, line=None) -> str:
    """One plain line per warning, without the source line Python shows by default."""
    return f"warning: {message}\n"


def _raise_interrupted(signum, frame) -> None:
    raise Interrupted(signum)


@contextlib.contextmanager
def _signals():
    """SIGINT and SIGTERM raise Interrupted in the main thread (restored afterwards)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in old:
        signal.signal(s, _raise_interrupted)
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def _usage_error(exc) -> int:
    """One `error:` line with the message, then the command's usage line."""
    ctx = getattr(exc, "ctx", None)
    path = ctx.command_path if ctx is not None else PROG
    message = exc.format_message()
    option = getattr(exc, "option_name", None)
    if option and type(exc).__name__ == "NoSuchOption":
        message = unknown_option_hint(option, path) or message
    print(f"error: {message}", file=sys.stderr)
    if ctx is not None:
        usage = ctx.get_usage().strip().removeprefix("Usage: ")
        print(f"usage: {usage}  (see {path} --help)", file=sys.stderr)
    return 2


def _interrupted(exc: Interrupted) -> int:
    from hovernet.progress import current_status

    name = "SIGTERM" if exc.signum == signal.SIGTERM else "Ctrl-C"
    status = current_status() or "nothing was finished"
    print(f"interrupted ({name}): {status}", file=sys.stderr, flush=True)
    return 128 + exc.signum


def run(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status instead of exiting."""
    from typer._click import exceptions as click_exc

    from hovernet.progress import set_status

    set_status(None)
    command = typer.main.get_command(build_app())
    hide_aliases(command)
    old_format = warnings.formatwarning
    warnings.formatwarning = _format_warning
    try:
        with _signals():
            result = command.main(args=argv, prog_name=PROG, standalone_mode=False)
        return result if isinstance(result, int) else 0
    except Interrupted as exc:
        return _interrupted(exc)
    except click_exc.NoArgsIsHelpError as exc:
        print(exc.format_message())
        return 2
    except click_exc.UsageError as exc:
        return _usage_error(exc)
    except typer.Abort:
        print("error: aborted", file=sys.stderr)
        return 1
    except HoverNetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        where = exc.filename if exc.filename is not None else "a file"
        print(
            f"error: cannot write or read {where}: {exc.strerror or exc}; check the path, its "
            "permissions and the free disk space",
            file=sys.stderr,
        )
        return 2
    finally:
        warnings.formatwarning = old_format


def main(argv: list[str] | None = None) -> None:
    tune_process()  # before anything imports torch
    sys.exit(run(argv))
