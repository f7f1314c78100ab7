"""Shell completion of `bnbench run` overrides: config groups and their options (norm=<TAB>),
and the dotted keys of the typed config (trainer.<TAB>). Typer installs the shell side
(`bnbench --install-completion`); this module only lists candidates, from conf/ and the schema,
without importing torch (a completion must answer in well under a second)."""

from __future__ import annotations

import dataclasses
import os
import shlex
from pathlib import Path

from bnbench.config import Config, config_dir


def groups(root: Path | None = None) -> dict[str, list[str]]:
    """Config group -> its options (file stems), e.g. {"norm": ["bn_after", "bn_before", "none"]}."""
    root = root or config_dir()
    found = {p.name: sorted(f.stem for f in p.glob("*.yaml"))
             for p in sorted(root.iterdir()) if p.is_dir() and p.name != "hydra" and not p.name.startswith("_")}
    launchers = root / "hydra" / "launcher"
    if launchers.is_dir():
        found["hydra/launcher"] = sorted(["basic", "joblib", "submitit_local", "submitit_slurm", "ray",
                                          *(f.stem for f in launchers.glob("*.yaml"))])
    return found


def keys(node: type = Config, prefix: str = "") -> list[str]:
    """Every dotted key of the typed config, e.g. trainer.epochs, norm.momentum, seed."""
    out = []
    for f in dataclasses.fields(node):
        kind = f.default_factory if f.default_factory is not dataclasses.MISSING else None  # type: ignore[misc]
        if isinstance(kind, type) and dataclasses.is_dataclass(kind):
            out += keys(kind, f"{prefix}{f.name}.")
        else:
            out.append(f"{prefix}{f.name}")
    return out


def complete_override(incomplete: str, before: list[str] | None = None) -> list[str]:
    """Candidates for one override word: `group=option` after `group=`, else groups (as
    `group=`) and keys (as `key=`) that start with what was typed.

    Bash splits words at `=` (COMP_WORDBREAKS), so there `norm=bn<TAB>` arrives as the words
    `norm`, `=` (``before``) and the incomplete `bn` (:func:`words_before`); bash then replaces
    only the part after the `=`, so the candidates are the bare options."""
    options = groups()
    before = list(before or [])
    if len(before) >= 2 and before[-1] == "=":
        return [o for o in options.get(before[-2].lstrip("+"), []) if o.startswith(incomplete)]
    if "=" in incomplete:
        key = incomplete.split("=", 1)[0]
        return [f"{key}={o}" for o in options.get(key.lstrip("+"), []) if f"{key}={o}".startswith(incomplete)]
    words = [f"{g}=" for g in options] + [f"{k}=" for k in keys() if k not in options]
    return [w for w in words if w.startswith(incomplete)]


def words_before() -> list[str]:
    """In a bash completion request, the words before the one being completed, as bash split
    them (COMP_WORDS, COMP_CWORD), then that word itself when it is the `=` of `norm=<TAB>`
    (click hands it over as ""); [] for other shells, which keep `key=value` whole."""
    if "COMP_WORDS" not in os.environ or "COMP_CWORD" not in os.environ:
        return []
    try:
        words = shlex.split(os.environ["COMP_WORDS"])
        cword = int(os.environ["COMP_CWORD"])
    except ValueError:  # an unfinished quote
        return []
    return words[1:cword + 1] if cword < len(words) and words[cword] == "=" else words[1:cword]
