"""The README documents what the code does: its settings table is the one settings.py generates."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from slmops.settings import Settings, env_vars, settings_markdown

README = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")


def test_settings_table_matches_settings_py() -> None:
    block = re.search(r"<!-- settings:start -->\n(.*?)\n<!-- settings:end -->", README, re.S)
    assert block is not None, "README lost its settings block"
    assert block.group(1) == settings_markdown(), "regenerate it with slmops.settings.settings_markdown()"


def test_every_setting_names_its_variables_and_says_what_it_does() -> None:
    table = settings_markdown()
    for field in dataclasses.fields(Settings):
        name = field.name
        assert field.metadata["description"], f"setting {name} has no description"
        for var in env_vars(name):
            assert f"`{var}`" in table
