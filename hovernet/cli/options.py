"""Option spelling shared by the commands: one primary name in --help, aliases accepted.

Commands declare their options with the primary name first (the original's underscore spelling
where the original had the option) and any aliases after it. `hide_aliases` (run on the whole
command tree by hovernet.cli.run) keeps the primary name for help and gives each command a click
token normaliser that maps every other accepted spelling onto it: underscores and dashes are
interchangeable everywhere (`--model_path` = `--model-path`), and declared aliases (`--ann-dir`
for `--annotations`) keep working. Help stays one name per option, so it fits 80 columns.
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


def hide_aliases(command) -> None:
    """Keep only the first long name of every option in help; the others become aliases.

    Walks a click command tree (typer.main.get_command of the app): each option keeps its
    first `--name` (the primary spelling, listed first in the declarations), and each
    command's token normaliser maps the other names, and any underscore/dash variant, onto
    it. Help then shows one name per option (80 columns), and every alias still works.
    """
    aliases: dict[str, str] = {}
    for param in getattr(command, "params", []):
        opts = getattr(param, "opts", None)
        if param.param_type_name != "option" or not opts:
            continue
        longs = [o for o in opts if o.startswith("--")]
        if len(longs) > 1:
            for alias in longs[1:]:
                aliases[canonical(alias)] = canonical(longs[0])
            param.opts = [o for o in opts if not o.startswith("--")] + longs[:1]
    settings = dict(command.context_settings or {})
    settings["token_normalize_func"] = normaliser(aliases)
    settings.setdefault("max_content_width", 80)
    command.context_settings = settings
    for sub in getattr(command, "commands", {}).values():
        hide_aliases(sub)


def unknown_option_hint(option: str, command_path: str) -> str | None:
    """A hint for an option the command does not have but that belongs elsewhere."""
    name = canonical(option)
    mode = ORIGINAL_MODE_OPTIONS.get(name)
    if mode is not None:
        option = "--" + name.replace("-", "_")  # the original's spelling
        return (
            f"{option} belongs to the original's {mode} mode (whole-slide images), not to "
            f"`{command_path}`: use `hovernet infer ... {mode} {option}=...`"
        )
    if name in INFER_GROUP_OPTIONS and command_path.startswith("hovernet infer "):
        option = "--" + name.replace("-", "_")
        sub = command_path.split()[-1]  # the sub-command the user typed (tile, wsi)
        return (
            f"{option} is an option of `hovernet infer`: put it before the sub-command "
            f"(hovernet infer {option}=... {sub} ...)"
        )
    return None
