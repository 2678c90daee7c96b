"""The `resnet-sweep` executable freezes its heap at exit (orchestrator.cli.program) without
leaving garbage unfinalized or changing the exit code."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.unit


def test_garbage_made_while_exiting_is_still_finalized_and_the_code_is_kept(tmp_path):
    written = tmp_path / "finalized.txt"
    script = textwrap.dedent(
        f"""
        import atexit
        import orchestrator.cli as cli

        class Summary:  # a finalizer that writes, in a reference cycle
            def __del__(self):
                open({str(written)!r}, "w").write("written")

        def command():
            live = [Summary()]
            live[0].me = live[0]
            atexit.register(live.clear)  # garbage made at exit, as Ray's shutdown makes
            return 3

        cli.main = command
        cli.program()
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 3, done.stderr
    assert written.read_text() == "written"
