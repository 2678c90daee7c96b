"""The project's contract with its dependencies and with itself: the installed versions are the
locked ones, every third-party import is declared, and imports point one way between layers."""

from __future__ import annotations

import ast
import re
import sys
from importlib import metadata
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "constraints.txt"

# Lowest first: a module may import from its own layer and the ones below, never above.
# resnet_core is pure torch; only the orchestrator talks to Ray, MLflow and YAML; the CLI is on top.
LAYERS = (
    ("resnet_core",),
    ("orchestrator.vocabulary", "orchestrator.trial_table"),  # words and the trial table, shared by all
    ("orchestrator.sweepfile",),  # the sweep file, its plan
    ("orchestrator.persistence",),  # where a sweep's files live; the driver lock
    ("orchestrator.tracking",),  # MLflow: the store, the login, a sweep read back
    ("orchestrator.report",),  # the report and the sweep's standing
    ("orchestrator.running",),  # Ray Tune: the driver, trials, cluster, progress, the MLflow tracker
    ("orchestrator.k8s", "orchestrator.flags"),  # Kubernetes manifests; the CLI's flags
    ("orchestrator.cli",),
    ("orchestrator.cli_reference",),  # docs/cli.md, written from the CLI's parser
)
ONLY_ORCHESTRATOR = {"ray", "mlflow", "yaml", "optuna"}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _locked() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[name.lower().replace("_", "-")] = version.strip()
    return pins


def test_the_installed_versions_are_the_locked_ones():
    """README's install commands and .ci/run install with -c constraints.txt: every locked
    package is installed at its locked version (pip freeze against the lock)."""
    installed = {d.metadata["Name"].lower().replace("_", "-"): d.version for d in metadata.distributions()}
    wrong = {name: (want, installed.get(name)) for name, want in _locked().items() if installed.get(name) != want}
    assert not wrong, f"installed differs from constraints.txt (locked, installed): {wrong}"


def test_every_declared_dependency_is_locked():
    declared = [_name(r) for r in metadata.requires("resnet-sweep") or []]
    assert set(declared) - set(_locked()) == set()


def _imports(path: Path, root: Path = ROOT) -> list[tuple[str, int]]:
    """(module imported, line) for each import in a file; relative ones made absolute, and
    `from a import b` read as a.b (b may be a module)."""
    package = ".".join(path.relative_to(root).with_suffix("").parts)
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package.rsplit(".", node.level)[0]
                module = f"{base}.{module}" if module else base
            found += [(f"{module}.{a.name}", node.lineno) for a in node.names]
    return found


def _code(root: Path = ROOT) -> list[Path]:
    return sorted([*(root / "resnet_core").rglob("*.py"), *(root / "orchestrator").rglob("*.py")])


def _layer(module: str) -> int | None:
    for i, names in enumerate(LAYERS):
        if any(module == name or module.startswith(name + ".") for name in names):
            return i
    return None


def test_every_module_has_a_layer():
    """A new package or module is placed in LAYERS (else the check would pass it by)."""
    unplaced = []
    for path in _code():
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        if module != "orchestrator" and _layer(module) is None:
            unplaced.append(module)
    assert not unplaced, f"not in LAYERS: {unplaced}"


def test_every_third_party_import_is_declared():
    """A package the code imports is in pyproject.toml's dependencies (not only installed
    because something else pulls it in)."""
    declared = {_name(r) for r in metadata.requires("resnet-sweep") or [] if "extra ==" not in r}
    providers = metadata.packages_distributions()
    missing = {}
    for path in _code():
        for module, line in _imports(path):
            top = module.split(".")[0]
            if top in sys.stdlib_module_names or top in ("resnet_core", "orchestrator"):
                continue
            dists = {d.lower().replace("_", "-") for d in providers.get(top, [])}
            if not dists & declared:
                missing.setdefault(top, f"{path.relative_to(ROOT)}:{line}")
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def _upward_imports(root: Path = ROOT) -> list[str]:
    upward = []
    for path in _code(root):
        where = path.relative_to(root).as_posix()
        module = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        here = _layer(module)
        for imported, line in _imports(path, root):
            there = _layer(imported)
            if there is not None and here is not None and there > here:
                upward.append(f"{where}:{line} imports {imported}")
            if module.startswith("resnet_core") and imported.split(".")[0] in ONLY_ORCHESTRATOR:
                upward.append(f"{where}:{line} imports {imported} (resnet_core is pure torch)")
    return upward


def test_imports_point_one_way():
    """cli → … → resnet_core (LAYERS): an import from a lower layer to a higher one, or of
    Ray/MLflow/YAML/Optuna from resnet_core, fails here naming the file and line."""
    upward = _upward_imports()
    assert not upward, "\n".join(upward)


def test_the_layer_check_sees_an_upward_import(tmp_path):
    """The check can fail: upward imports in a copy of the layout are each reported."""
    for package in ("resnet_core", "orchestrator"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "orchestrator" / "tracking").mkdir()
    (tmp_path / "resnet_core" / "probe.py").write_text("from orchestrator import cli\nimport ray\nfrom . import data\n")
    (tmp_path / "orchestrator" / "tracking" / "store.py").write_text(
        "from orchestrator.running import sweep\nfrom ..sweepfile import spec\nfrom resnet_core import probe\n"
    )
    assert _upward_imports(tmp_path) == [
        "orchestrator/tracking/store.py:1 imports orchestrator.running.sweep",
        "resnet_core/probe.py:1 imports orchestrator.cli",
        "resnet_core/probe.py:2 imports ray (resnet_core is pure torch)",
    ]
