"""`hovernet view`: look at a slide-mode output folder in the browser (docs/viewer.md).

Serves the slides of OUT_DIR (pan and zoom, nuclei outlines in class colours, heat map, legend,
colour by measurement, GeoJSON of the view) on http://127.0.0.1:8765/ until Ctrl-C. The nucleus
stores are only read.
"""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("view")
    def view(
        out_dir: Path = typer.Argument(..., help="Output folder of `hovernet infer wsi`."),
        slide: Path | None = typer.Option(
            None, "--slide", help="The slide file (or a folder of slides) when it moved."
        ),
        host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
        port: int = typer.Option(8765, "--port", help="Port to listen on (0: any free one)."),
        no_browser: bool = typer.Option(False, "--no-browser", help="Do not open a browser."),
    ) -> None:
        """Serve a slide-mode output folder to the browser: slide, nuclei, heat map, legend."""
        from hovernet.view.server import serve

        serve(out_dir, slide=slide, host=host, port=port, open_browser=not no_browser)
