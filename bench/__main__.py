"""The benchmarks, one command each; they print tables with ratios measured side by side in one
run and never gate CI. From the repository root (or with its path from anywhere):

    python bench trainer        ours vs a conventional pipeline, each speed lever on/off, 64k-step wall time
    python bench packing        K training processes sharing one device vs one alone
    python bench arrays         K trials as one fused model (member-images/s) vs one alone vs K processes
    python bench orchestration  a 16-trial sweep: wall time vs the ideal and vs bare Ray Tune
    python bench asha           the quickstart space with and without ASHA: epochs spent, best val error
    python bench loader         the streaming image-folder loader: decoded+augmented images/s per worker
    python bench ui             `resnet-sweep ui` with and without MLflow's job runner: start, memory, stop

`python bench NAME --help` for each one's options; numbers go to docs/benchmarks.md.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root: resnet_core, bench

NAMES = ("trainer", "packing", "arrays", "orchestration", "asha", "loader", "ui")


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in NAMES:
        print(__doc__.strip(), file=sys.stderr)
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    return importlib.import_module(f"bench.{argv[0]}").main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
