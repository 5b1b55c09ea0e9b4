"""Every script has help with an example, and the README documents every one of its options."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from conftest import ROOT

SCRIPTS = ["setup_dlq.py", "producer.py", "consumer_aggregation.py", "dlq_producer.py", "dlq_consumer.py",
           "dlq_replay.py", "dlq_console.py"]
README = (ROOT / "README.md").read_text()


def help_text(script: str) -> str:
    result = subprocess.run([sys.executable, str(ROOT / script), "--help"], capture_output=True, text=True,
                            timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_has_an_example_and_readme_lists_every_option(script):
    text = help_text(script)
    assert "example:" in text and f"python {script}" in text
    assert f"`{script}`" in README
    options = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]+)", text)) - {"--help"}
    missing = sorted(option for option in options if not re.search(rf"(?<![\w-]){option}(?![\w-])", README))
    assert not missing, f"README.md does not mention {script}'s {missing}"


def test_readme_quick_start_is_the_two_make_commands():
    quick_start = README.split("## Quick start", 1)[1].split("##", 1)[0]
    assert "make demo" in quick_start and "make test" in quick_start
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    assert "make test" in (ROOT / ".ci" / "run").read_text()
