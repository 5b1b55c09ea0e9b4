"""Below Python 3.11 every script stops with one sentence and exit code 2, before any import that would fail."""

from __future__ import annotations

import ast
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest

from orders_dlq import python_version

ROOT = Path(__file__).resolve().parent.parent.parent
SCRIPTS = ["setup_dlq.py", "producer.py", "consumer_aggregation.py", "dlq_producer.py", "dlq_consumer.py",
           "dlq_replay.py"]


def test_old_versions_get_one_sentence_and_new_ones_pass():
    assert python_version.problem((3, 11, 0, "final", 0)) is None
    assert python_version.problem((3, 13, 1)) is None
    message = python_version.problem((3, 10, 12, "final", 0))
    assert message == ("orders-dlq needs Python 3.11 or newer, but this is Python 3.10: install a newer Python "
                       "and recreate the virtualenv (see README.md).")


def test_require_exits_2_on_an_old_version():
    stderr = StringIO()
    with pytest.raises(SystemExit) as exit_info:
        python_version.require((3, 8, 10, "final", 0), stderr=stderr)
    assert exit_info.value.code == 2
    assert stderr.getvalue().count("\n") == 1 and "Python 3.8" in stderr.getvalue()


@pytest.mark.parametrize("script", SCRIPTS)
def test_each_script_checks_before_any_other_import(script):
    tree = ast.parse((ROOT / script).read_text())
    imports = [node for node in tree.body if isinstance(node, ast.Import | ast.ImportFrom)
               and not (isinstance(node, ast.ImportFrom) and node.module == "__future__")]
    first = imports[0]
    assert isinstance(first, ast.Import) and first.names[0].name == "orders_dlq.python_version", script


@pytest.mark.parametrize("path", ["orders_dlq/python_version.py", *SCRIPTS])
def test_the_check_parses_with_an_older_grammar(path):
    # The check only helps if an old interpreter can compile the file far enough to run it.
    ast.parse((ROOT / path).read_text(), feature_version=(3, 8))


@pytest.mark.parametrize("script", ["setup_dlq.py", "dlq_replay.py", "orders_dlq/local_kafka.py"])
def test_a_script_run_by_an_old_python_says_so_and_exits_2(script):
    # Fake the interpreter's version before the script starts, as an old Python would report it.
    # Run from the project's directory, as a user would: `python -c` puts it first on the import path.
    fake = (f"import runpy, sys; sys.version_info = (3, 9, 18, 'final', 0); "
            f"sys.argv = [{script!r}]; runpy.run_path({str(ROOT / script)!r}, run_name='__main__')")
    result = subprocess.run([sys.executable, "-c", fake], capture_output=True, text=True, timeout=60,
                            stdin=subprocess.DEVNULL, cwd=ROOT)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert result.stderr.startswith("orders-dlq needs Python 3.11 or newer, but this is Python 3.9")
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1
