"""`hovernet cohort OUT_DIR`: rebuild `OUT_DIR/cohort.csv` from the finished slides' summaries and
CSVs (one row per slide; see docs/slide.md#cohort-table). Slide mode keeps the table up to date
as slides finish; this command recomputes every row, e.g. after a slide's outputs were removed
or after an upgrade that adds columns."""

from __future__ import annotations

from pathlib import Path

import typer

from hovernet.errors import HoverNetError


def register(app: typer.Typer) -> None:
    @app.command("cohort")
    def cohort(
        out_dir: Path = typer.Argument(..., help="Output folder of `hovernet infer wsi`."),
    ) -> None:
        """Rebuild OUT_DIR/cohort.csv: per slide tissue mm^2, nuclei and nuclei/mm^2 in total
        and per class, class fractions, per-class feature statistics, the run's settings."""
        from hovernet.io.cohort_files import COHORT_CSV, update_cohort_table

        if not out_dir.is_dir():
            raise HoverNetError(
                f"{out_dir} is not a folder: give the --output_dir of `hovernet infer wsi`"
            )
        n = update_cohort_table(out_dir)
        print(f"{out_dir / COHORT_CSV}: {n} slide{'s' if n != 1 else ''}")
