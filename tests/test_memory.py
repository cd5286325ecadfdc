"""tinyse/memory.py: glibc keeps freed memory only when asked; the command-line tools ask, ``import tinyse`` does not.

The import is checked in a fresh Python process: this one has imported (and maybe run) the tools already.
"""
import importlib
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
TOOLS = ["train", "evaluate", "analyze", "demo", "experiments", "bench.cli"]  # python -m tinyse.NAME (bench: its cli)
GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


def fresh_python(code, **env):
    """The lines ``code`` prints, run by a new interpreter in the repository (without the off switch unless given)."""
    environment = {k: v for k, v in os.environ.items() if k != "TINYSE_KEEP_FREED_MEMORY"}
    finished = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT,
                              env=dict(environment, **env), check=True)
    return finished.stdout.split()


def test_importing_tinyse_and_its_tools_leaves_malloc_alone_until_asked():
    imports = ", ".join(f"tinyse.{tool}" for tool in TOOLS)
    code = f"import tinyse, {imports}; print(tinyse.memory._kept, tinyse.keep_freed_memory(), tinyse.memory._kept)"
    after_import, returned, after_call = fresh_python(code)
    assert after_import == "False", "import tinyse changed malloc's settings"
    if GLIBC:  # the flag does witness the call: asking sets it
        assert returned == after_call == "True"


def test_the_environment_switch_turns_the_call_off():
    assert fresh_python("import tinyse; print(tinyse.keep_freed_memory(), tinyse.memory._kept)",
                        TINYSE_KEEP_FREED_MEMORY="0") == ["False", "False"]


@pytest.mark.parametrize("tool", TOOLS)
def test_each_command_line_tool_asks_first_thing_in_main(tool, monkeypatch, capsys):
    module = importlib.import_module(f"tinyse.{tool}")
    calls = []
    monkeypatch.setattr(module, "keep_freed_memory", lambda: calls.append(tool))
    with pytest.raises(SystemExit):
        module.main(["--help"])  # argparse prints the help and exits, after the call
    assert calls == [tool]
    assert "usage:" in capsys.readouterr().out
