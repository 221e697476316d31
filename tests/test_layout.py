"""The dependency direction of DESIGN.md, checked by importing every module in a clean process."""

from __future__ import annotations

import json
import pkgutil
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# package -> top-level packages it must run without (they are blocked while its modules import)
FORBIDDEN = {
    "personalize": {"torch", "ray", "onnxruntime", "PIL", "pyarrow", "tritonclient"},
    "serving": {"torch"},
    "pam.cli": {"torch", "ray", "onnxruntime"},
}
# modules of `export` that must stay light: the package itself and its preprocessing
EXPORT_LIGHT = {"export": {"torch", "ray", "onnxruntime"}}
EXPORT_PREPROCESS_ALLOWED = {"PIL", "numpy"}


def _modules_of(package: str) -> list[str]:
    path = ROOT / package.replace(".", "/")
    if path.is_file() or path.with_suffix(".py").is_file():
        return [package]
    names = [package]
    for info in pkgutil.walk_packages([str(path)], prefix=package + "."):
        names.append(info.name)
    return names


def _imported_top_levels(modules: str | list[str], block: set[str] = frozenset()) -> set[str]:
    """Import `modules` in one fresh interpreter (optionally with `block` made unimportable)."""
    modules = [modules] if isinstance(modules, str) else modules
    code = f"""
import importlib.abc, json, sys
BLOCK = {sorted(block)!r}
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in BLOCK:
            raise ImportError(f"{{name}} is blocked by the layout test")
sys.meta_path.insert(0, Blocker())
before = set(sys.modules)
for name in {modules!r}:
    importlib.import_module(name)
print(json.dumps(sorted({{m.split('.')[0] for m in set(sys.modules) - before}})))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, f"importing {modules} failed:\n{out.stderr[-3000:]}"
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_forbidden_imports(package):
    """Every module imports with its forbidden packages made unimportable.

    Blocking (rather than checking sys.modules afterwards) asks the real question, "does it need
    them?": scikit-learn, for one, imports pandas and so pyarrow whenever they are installed.
    """
    _imported_top_levels(_modules_of(package), block=FORBIDDEN[package])


def test_export_package_is_light():
    imported = _imported_top_levels("export")
    assert not imported & EXPORT_LIGHT["export"], imported


def test_export_preprocess_imports_pillow_and_numpy_only():
    if not (ROOT / "export" / "preprocess.py").exists():
        pytest.skip("export/preprocess.py not written yet")
    imported = _imported_top_levels("export.preprocess")
    third_party = {m for m in imported if m not in sys.stdlib_module_names and m != "export"}
    assert third_party <= EXPORT_PREPROCESS_ALLOWED, third_party


def test_ruff_lint_clean():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert ruff, "ruff is part of the test extra"
    out = subprocess.run([ruff, "check", "."], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr


def test_cli_help_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "pam.cli", "--help"], capture_output=True, text=True, cwd=ROOT)
    for name in ("train", "export", "features", "serve", "eval", "simulate", "bench", "demo"):
        assert name in out.stdout
