"""What this package declares it needs (pyproject.toml, as installed): named in the one-line
errors of the compat modules. Torch-free, so the CLI can name it without importing torch."""

from __future__ import annotations

import re
from importlib import metadata


def declared(package: str) -> str:
    """``package``'s requirement as declared (e.g. ``torch<2.15,>=2.4``), else where to look."""
    try:
        requires = metadata.requires("resnet-sweep") or []
    except metadata.PackageNotFoundError:
        requires = []
    wanted = [r.split(";")[0].strip() for r in requires if re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0] == package]
    return wanted[0] if wanted else f"the {package} in constraints.txt"
