"""docs/cli.md: the committed page is what the parser gives, it names every command and flag of
the parser (walked here apart from the generator), a flag added to the parser makes it stale, it
does not depend on the terminal, and its exit codes are the ones the CLI returns."""

from __future__ import annotations

import argparse
import inspect

import pytest

from orchestrator import cli
from orchestrator import cli_reference as reference
from orchestrator.cli_reference import COMMAND, REFERENCE_PATH, cli_reference, main

pytestmark = pytest.mark.unit

STALE = f"docs/cli.md is stale: regenerate it with {COMMAND}"


def _committed() -> str:
    return REFERENCE_PATH.read_text()


def test_the_committed_page_is_the_generated_one():
    assert _committed() == cli_reference(), STALE


def _parsers(parser: argparse.ArgumentParser):
    """Every parser under ``parser``, itself first."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


def test_the_page_names_every_command_and_flag_in_the_parsers_order():
    page = _committed()
    for parser in _parsers(cli.build_parser()):
        heading = "# The command line" if parser.prog == "resnet-sweep" else f"## `{parser.prog}`"
        assert heading in page, f"{parser.prog}: {STALE}"
        start = page.index(heading)
        section = page[start : page.find("\n## ", start + 1)]
        flags = [s for a in parser._actions for s in a.option_strings if s not in ("-h", "--help")]
        positions = [section.find(f"`{flag}`") for flag in flags]
        assert -1 not in positions, f"{parser.prog} lacks {flags[positions.index(-1)]}: {STALE}"
        # in order, except that argparse shows the groups one after another
        grouped = [s for g in parser._action_groups for a in g._group_actions for s in a.option_strings]
        grouped = [s for s in grouped if s in flags]
        assert [section.find(f"`{f}`") for f in grouped] == sorted(section.find(f"`{f}`") for f in grouped)
    for code, *_ in reference.EXIT_CODES:
        assert f"| `{code}` |" in page


_BUILD_PARSER = cli.build_parser


def _grown_parser() -> argparse.ArgumentParser:
    parser = _BUILD_PARSER()
    plan = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["plan"]
    plan.add_argument("--max-hours", type=float, metavar="H", default=24.0, help="stop planning past H hours")
    return parser


def test_a_flag_added_to_the_parser_makes_the_page_stale(tmp_path, capsys, monkeypatch):
    grown = cli_reference(_grown_parser())
    assert "| `--max-hours` | `H` | `24.0` |  | stop planning past H hours |" in grown
    assert "`--max-hours`" not in _committed()
    monkeypatch.setattr(cli, "build_parser", _grown_parser)
    page = tmp_path / "cli.md"
    page.write_text(_committed())
    assert main(["--check", "--out", str(page)]) == 1
    assert capsys.readouterr().err == f"{page} is stale: regenerate it with {COMMAND}\n"


def test_the_command_writes_the_page_and_then_finds_it_current(tmp_path, capsys):
    page = tmp_path / "docs" / "cli.md"
    assert main(["--check", "--out", str(page)]) == 1  # none yet
    assert main(["--out", str(page)]) == 0
    assert page.read_text() == _committed()
    assert main(["--check", "--out", str(page)]) == 0
    assert f"{page} is current" in capsys.readouterr().out


@pytest.mark.parametrize("columns", ["20", "80", "400"])
def test_the_page_does_not_depend_on_the_terminal_or_the_machine(monkeypatch, columns):
    monkeypatch.setenv("COLUMNS", columns)
    page = cli_reference()
    assert page == _committed()
    assert str(REFERENCE_PATH.parents[1]) not in page and "/home/" not in page and "/tmp/" not in page


def test_every_exit_code_constant_of_the_cli_is_explained(monkeypatch):
    constants = {name: value for name, value in vars(cli).items() if name.startswith("EXIT_")}
    assert constants == {name: code for code, name, _ in reference.EXIT_CODES if name}
    # 130 has no constant: main returns it on Ctrl-C, as the sweep does
    assert "return 130" in inspect.getsource(cli.main)
    monkeypatch.setattr(cli, "EXIT_TIMEOUT", 4, raising=False)
    with pytest.raises(ValueError, match="EXIT_TIMEOUT has no meaning to show"):
        cli_reference()


def test_a_flag_a_command_requires_itself_is_shown_required(capsys):
    """`train` checks --dataset itself (the parser leaves it optional for the sweep file's sake)."""
    page = _committed()
    assert "resnet-sweep train --dataset DATASET [options]" in page
    assert cli.main(["train", "--depth", "20"]) == cli.EXIT_BAD_INPUT
    assert capsys.readouterr().err.startswith("error: --dataset: required")
