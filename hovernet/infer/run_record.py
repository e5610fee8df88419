"""A run's identity: `RunRecord`, the checkpoint's content hash and the settings that change the
nuclei, never a display name.

Tile mode writes it to its output folder (`RUN_RECORD`), slide mode into each slide's summary
(`"run"`) and store meta (`"run"`); a folder, summary or store counts as finished (or resumes)
only for the same record. A field recorded besides the record's own (an older version's display
name, "model") does not make a run differ, so outputs written before keep being recognised.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RUN_RECORD = "hovernet-run.json"  # tile mode: the model and settings the folder's outputs have
DISPLAY_NAMES = ("model", "model_name")  # never part of a run's identity


@dataclass(frozen=True)
class RunRecord:
    """`model_id` (the checkpoint's content hash) and the settings that change the nuclei, as
    (name, value) pairs in the order they are recorded; values are JSON scalars."""

    model_id: str
    settings: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        names = [name for name, _ in self.settings]
        if len(set(names)) != len(names) or "model_id" in names:
            raise ValueError(f"a run record names each setting once: {names}")
        named = [name for name in names if name in DISPLAY_NAMES]
        if named:
            raise ValueError(f"a display name is not part of a run's identity: {named}")

    @classmethod
    def of(cls, model_id: str, **settings: Any) -> RunRecord:
        """The record of `model_id` and `settings` (in the order given)."""
        return cls(model_id, tuple(settings.items()))

    def to_dict(self) -> dict[str, Any]:
        return {"model_id": self.model_id, **dict(self.settings)}

    def differences(self, old: Mapping[str, Any]) -> str | None:
        """What differs between a recorded run `old` (a mapping read back from JSON) and this
        one, field by field ("name: old -> new"; only this record's fields), None: the same."""
        diff = [
            f"{k}: {old.get(k)!r} -> {v!r}" for k, v in self.to_dict().items() if old.get(k) != v
        ]
        return "; ".join(diff) or None


def recorded_run(path: Path, field: str | None = None) -> Any:
    """The JSON in `path` (its `field`: a summary's "run"), as written; OSError or ValueError
    where it cannot be read."""
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if field is None else data.get(field)
