"""README's Layout table matches the tree: every top-level folder, every package of
pam_keyinit_py/ and every module at its top is named there, and every path it names exists."""

from __future__ import annotations

import re
import subprocess

from tests.conftest import REPO


def _layout() -> str:
    text = (REPO / "README.md").read_text()
    start = text.index("## Layout")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def test_layout_names_every_folder_and_package() -> None:
    layout = _layout()
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    folders = {line.split("/")[0] for line in tracked.splitlines()
               if "/" in line and not line.startswith(".")}
    package = REPO / "pam_keyinit_py"
    packages = {f"pam_keyinit_py/{d.name}/" for d in package.iterdir() if (d / "__init__.py").exists()}
    modules = {m.name for m in package.glob("*.py") if m.name != "__init__.py"}
    missing = sorted(f for f in folders if f"`{f}/" not in layout)
    missing += sorted(p for p in packages if f"`{p}" not in layout)
    missing += sorted(m for m in modules if m not in layout)
    assert not missing, f"README's Layout table does not name: {missing}"


def test_every_path_the_layout_names_exists() -> None:
    named = re.findall(r"^\| `([^`]+)`", _layout(), re.M)
    assert len(named) > 10, named
    gone = [p for p in named if not (REPO / p).exists()]
    assert not gone, f"README's Layout table names paths that do not exist: {gone}"
