"""The manual pages: keyinit(1) is what its argparse parser says now, ticketd.toml(5) names every
configuration key, and man(1) renders each page without a warning."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from pam_keyinit_py.cli import build_parser
from pam_keyinit_py.commands.install import MAN_PAGES
from pam_keyinit_py.tickets import config
from tests.conftest import REPO, require

MAN = REPO / "man"


def test_keyinit_page_is_generated_from_the_current_parser() -> None:
    """scripts/manpages.py --check: a new command or option without a regenerated page fails."""
    out = subprocess.run([sys.executable, str(REPO / "scripts/manpages.py"), "--check"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    page = (MAN / "keyinit.1").read_text()
    commands = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for name in commands:
        assert f"keyinit {name}" in page.replace("\\-", "-"), name


def test_ticketd_toml_page_names_every_key() -> None:
    page = (MAN / "ticketd.toml.5").read_text()
    documented = {word for line in page.splitlines() if line.startswith((".BR ", ".B "))
                  for word in line.split()[1:] if word.isidentifier()}
    missing = set(config._FIELDS) - documented
    assert not missing, f"ticketd.toml(5) lacks {sorted(missing)}"
    assert "[[keytab]]" in page


def test_ticketd_toml_page_states_the_real_defaults() -> None:
    """Each '.BR key " (default)"' line of ticketd.toml(5) says what Config() holds."""
    import re
    import tomllib

    page = (MAN / "ticketd.toml.5").read_text()
    stated = dict(re.findall(r'^\.BR (\w+) " \((.*)\)"$', page, re.M))
    assert len(stated) > 20, stated
    defaults = config.Config()
    wrong = {}
    for key, text in stated.items():
        value = tomllib.loads(f"v = {text.replace(chr(34) * 2, chr(34))}")["v"]
        if value != getattr(defaults, key):
            wrong[key] = (value, getattr(defaults, key))
    assert not wrong, f"ticketd.toml(5) states defaults Config() does not hold: {wrong}"


@pytest.mark.parametrize("page", MAN_PAGES)
def test_page_renders_without_warnings(page: str) -> None:
    require(shutil.which("man"), "man-db is not installed")
    out = subprocess.run(["man", "--warnings", "-l", str(MAN / page)], capture_output=True, text=True,
                         env={**os.environ, "MANWIDTH": "80", "MANPAGER": "cat", "LC_ALL": "C.UTF-8"})
    assert out.returncode == 0 and out.stderr == "", out.stderr
    name = page.rsplit(".", 1)[0]
    assert out.stdout.splitlines()[0].startswith(name.upper()), out.stdout[:200]
