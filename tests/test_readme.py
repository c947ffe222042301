"""The README stays true: its configuration table is the one the code generates, its quick start works."""

from __future__ import annotations

import re
from pathlib import Path

from sniffer.config import options_markdown

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_configuration_table_is_generated_from_the_option_table() -> None:
    assert options_markdown().strip() in README


def test_quick_start_replays_a_bundled_capture_that_exists() -> None:
    first_block = re.search(r"```sh\n(.*?)```", README, re.S)
    assert first_block is not None
    commands = first_block.group(1).strip().splitlines()
    assert len(commands) == 2
    replay = re.search(r"moesif-sniffer replay (\S+)", commands[0])
    assert replay is not None and (ROOT / replay.group(1)).is_file()
    assert "pytest" in commands[1]
    # .ci/run runs the README's test command
    test_command = commands[1].split("&&", 2)[-1].strip()
    assert test_command.split("&&")[0].strip().startswith("pip install -e '.[test]'")
    assert commands[1].split("&&", 2)[-1].strip() in (ROOT / ".ci" / "run").read_text()
