"""Option spelling shared by the commands: one primary name in --help, aliases accepted.

Each command declares only its primary option names (the original's underscore spelling where
the original had the option). `context(aliases)` gives the click context settings whose token
normaliser maps every other accepted spelling onto the primary one: underscores and dashes are
interchangeable everywhere (`--model_path` = `--model-path`), and a command's `aliases` table
adds other names (`--ann-dir` for `--annotations`). Help stays one name per option, so it fits
80 columns, and the aliases keep working.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

# options of the original's run_infer.py that belong to a mode this package has not built (or
# not in this sub-command): name (dashes) -> the mode
ORIGINAL_MODE_OPTIONS = {
    "proc-mag": "wsi",
    "save-thumb": "wsi",
    "save-mask": "wsi",
    "cache-path": "wsi",
    "chunk-shape": "wsi",
    "tile-shape": "wsi",
    "ambiguous-size": "wsi",
    "input-mask-dir": "wsi",
    "presplit-dir": "wsi",
}
# options of `hovernet infer` itself (given after the sub-command by mistake)
INFER_GROUP_OPTIONS = {
    "model-path",
    "model-mode",
    "nr-types",
    "type-info-path",
    "batch-size",
    "nr-inference-workers",
    "nr-post-proc-workers",
    "device",
    "gpu",
    "threads",
    "precision",
}


def canonical(name: str) -> str:
    """ "--Model_Path" -> "model-path": the spelling-free form of an option name."""
    return name.lstrip("-").replace("_", "-").lower()


def normaliser(aliases: Mapping[str, str] | None = None) -> Callable[[str], str]:
    """The click token normaliser: name without dashes -> canonical primary name."""
    table = {canonical(k): canonical(v) for k, v in (aliases or {}).items()}

    def normalise(token: str) -> str:
        name = token.replace("_", "-")
        return table.get(name, name)

    return normalise


def context(aliases: Mapping[str, str] | None = None, **extra) -> dict:
    """`context_settings` for a command: alias normaliser and help at most 80 columns."""
    return {"token_normalize_func": normaliser(aliases), "max_content_width": 80, **extra}


def unknown_option_hint(option: str, command_path: str) -> str | None:
    """A hint for an option the command does not have but that belongs elsewhere."""
    name = canonical(option)
    mode = ORIGINAL_MODE_OPTIONS.get(name)
    if mode is not None:
        return (
            f"{option} belongs to the original's {mode} mode (whole-slide images), not to "
            f"`{command_path}`: use `hovernet infer ... {mode} {option}=...`"
        )
    if name in INFER_GROUP_OPTIONS and command_path.startswith("hovernet infer "):
        return (
            f"{option} is an option of `hovernet infer`: put it before the sub-command "
            f"(hovernet infer {option}=... tile ...)"
        )
    return None
