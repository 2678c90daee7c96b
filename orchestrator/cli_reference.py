"""docs/cli.md, the reference of every `resnet-sweep` command and flag, written from the parser
itself (orchestrator/cli.py's build_parser): a flag's metavar, default, choices and help come
from its argparse action, in the parser's order, so the page cannot drift from the code. The
exit codes are listed here, once, with what each means; a code constant added to the CLI without
a line here stops the page from being written.

``python -m orchestrator.cli_reference`` rewrites the page; ``--check`` says whether it is
current (exit 1 when stale). Nothing depends on the terminal: argparse's own formatter (which
reads COLUMNS) is not used."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from orchestrator import cli
from orchestrator.flags import MODEL_FLAGS, TRAIN_FLAGS
from orchestrator.sweepfile.reference import anchor, page_main

__all__ = ["COMMAND", "EXIT_CODES", "REFERENCE_PATH", "cli_reference", "main"]

# The source checkout's copy; the page belongs to the repository, not to an installed package.
REFERENCE_PATH = Path(__file__).resolve().parents[1] / "docs" / "cli.md"
COMMAND = "python -m orchestrator.cli_reference"

# Every exit code the CLI returns: (code, its name in orchestrator/cli.py, what it means).
# 130 has no constant: `run`/`resume` return it from the sweep (orchestrator/running/sweep.py)
# and main() on a KeyboardInterrupt, as a shell reports Ctrl-C.
EXIT_CODES = (
    (cli.EXIT_OK, "EXIT_OK", "success"),
    (
        cli.EXIT_FAILURE,
        "EXIT_FAILURE",
        "a runtime failure, found only by trying: a trial failed or ran out of memory (`run`, `resume`); "
        "data not on disk that could not be downloaded; no Ray cluster at `--address`; MLflow did not "
        "answer while a sweep was read (`status`, `report`, `compare`) or results are still not sent "
        "(`sync`); another driver took the sweep over; no checkpoint to `export`; `plan --calibrate` "
        "without the trials' device here; the installed Ray or torch lacks what the tool needs; "
        "`compare --fail-on-worse` found a configuration worse beyond noise",
    ),
    (
        cli.EXIT_BAD_INPUT,
        "EXIT_BAD_INPUT",
        "bad input: a wrong flag or value, a sweep file that does not validate, a sweep, store or "
        "trial that is not there, a sweep whose driver is still running; one line on stderr naming "
        "the flag or key, and nothing was started or written",
    ),
    (cli.EXIT_DIVERGED, "EXIT_DIVERGED", "`train` only: the training run diverged (try a lower `--lr`)"),
    (
        130,
        "",
        "interrupted (Ctrl-C), as a shell reports it: `run` and `resume` stop their trials and print the "
        "`resnet-sweep resume …` command that continues the sweep; any other command prints `interrupted`",
    ),
)

# Flags that set a sweep file's setting: their default is the setting's (docs/sweep-file.md).
SETTING_OF = {f.dest: f.key for f in MODEL_FLAGS + TRAIN_FLAGS}
# Flags a command requires although its parser does not (it checks them itself, exit 2):
# {command: {dest}}. `train` shares --dataset with the sweep file's optional dataset.name.
REQUIRED_BY_COMMAND = {"resnet-sweep train": {"dataset__name"}}


def _exit_constants() -> dict[str, int]:
    """The EXIT_* constants of orchestrator/cli.py."""
    return {name: value for name, value in vars(cli).items() if name.startswith("EXIT_") and isinstance(value, int)}


def _check_exit_codes() -> None:
    listed = {name for _, name, _ in EXIT_CODES if name}
    missing = sorted(set(_exit_constants()) - listed)
    if missing:
        raise ValueError(f"{', '.join(missing)} has no meaning to show: add it to EXIT_CODES in {__name__}")
    for code, name, _ in EXIT_CODES:
        if name and _exit_constants()[name] != code:
            raise ValueError(f"EXIT_CODES in {__name__}: {name} is {_exit_constants()[name]}, not {code}")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(_cell, row)) + " |" for row in rows]
    return "\n".join(lines)


def _code(value: Any) -> str:
    return f"`{value}`"


def _help(action: argparse.Action, prog: str) -> str:
    """The help text as argparse shows it (``%(default)s`` and the like filled in)."""
    text = action.help or ""
    if "%" in text:
        params = {k: v for k, v in vars(action).items() if v is not argparse.SUPPRESS}
        if params.get("choices") is not None:
            params["choices"] = ", ".join(map(str, params["choices"]))
        text = text % {**params, "prog": prog}
    return text


def _metavar(action: argparse.Action) -> str:
    """The word for an argument's value: its metavar, else argparse's (DEST for a flag, dest for
    a positional), or the flag's own name where argparse would list the choices."""
    if action.metavar is not None:
        return action.metavar
    if not action.option_strings:
        return action.dest
    if action.choices is not None:
        return action.option_strings[-1].lstrip("-").upper().replace("-", "_")
    return action.dest.upper()


def _value(action: argparse.Action) -> str:
    """What follows the flag: its metavar, "one of the choices", or nothing for a switch and a
    positional (whose name is its metavar)."""
    if action.nargs == 0 or not action.option_strings:
        return ""
    if action.metavar is None and action.choices is not None:
        return "one of the choices"
    return _code(_metavar(action)) + (" (repeatable)" if isinstance(action, argparse._AppendAction) else "")


def _required(action: argparse.Action, prog: str) -> bool:
    return action.required or action.dest in REQUIRED_BY_COMMAND.get(prog, ())


def _default(action: argparse.Action, prog: str) -> str:
    if _required(action, prog):
        return "required"
    if action.dest in SETTING_OF:
        return f"the setting's: `{SETTING_OF[action.dest]}`"
    default = action.default
    if default is None or default is argparse.SUPPRESS or default == []:
        return ""
    if isinstance(action, argparse._StoreTrueAction):
        return "off" if default is False else "on"
    return _code(default)


def _name(action: argparse.Action) -> str:
    if action.option_strings:
        return ", ".join(map(_code, action.option_strings))
    return _code(_metavar(action))


def _arguments(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The parser's own arguments, in its order: no help flag, no subcommand action."""
    return [
        a
        for a in parser._actions
        if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)) and a.help is not argparse.SUPPRESS
    ]


def _synopsis(parser: argparse.ArgumentParser) -> str:
    """One line: the command, its positionals, its required options, then [options]."""
    parts, grouped = [parser.prog], set()
    actions = _arguments(parser)
    parts += [_metavar(a) for a in actions if not a.option_strings]
    for group in parser._mutually_exclusive_groups:
        grouped |= set(group._group_actions)
        if group.required:
            choice = " | ".join(
                a.option_strings[0] + (f" {_metavar(a)}" if a.nargs != 0 else "") for a in group._group_actions
            )
            parts.append(f"({choice})")
    required = [a for a in actions if a.option_strings and _required(a, parser.prog) and a not in grouped]
    parts += [f"{a.option_strings[0]} {_metavar(a)}" for a in required]
    if any(a.option_strings and a not in required and a not in grouped for a in actions) or any(
        not g.required for g in parser._mutually_exclusive_groups
    ):
        parts.append("[options]")
    subcommands = _subcommands(parser)
    if subcommands:
        parts.append("COMMAND")
    return " ".join(parts)


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, one-line help, parser) of each subcommand, in the parser's order."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            found += [(name, helps.get(name, ""), sub) for name, sub in action.choices.items()]
    return found


def _command_part(name: str, summary: str, parser: argparse.ArgumentParser) -> list[str]:
    """The section of one command (its subcommands after it)."""
    parts = [f"## `{parser.prog}`", summary[:1].upper() + summary[1:] + "."]
    if parser.description:
        parts.append(parser.description)
    parts.append(f"```text\n{_synopsis(parser)}\n```")
    subcommands = _subcommands(parser)
    if subcommands:
        parts.append(
            _table(
                ("command", "what it does"),
                [(f"[`{parser.prog} {n}`](#{anchor(s.prog)})", h) for n, h, s in subcommands],
            )
        )
    for group in parser._action_groups:
        actions = [a for a in group._group_actions if a in _arguments(parser)]
        if not actions:
            continue
        rows = [
            (
                _name(a),
                _value(a),
                _default(a, parser.prog),
                ", ".join(map(_code, a.choices)) if a.choices is not None else "",
                _help(a, parser.prog),
            )
            for a in actions
        ]
        title = group.title or "options"
        if title not in ("positional arguments", "options", "optional arguments"):
            title = f"{title} flags"
        parts.append(f"{title[:1].upper() + title[1:]}:")
        parts.append(_table(("argument", "value", "default", "choices", "meaning"), rows))
    for group in parser._mutually_exclusive_groups:
        flags = ", ".join(_code(a.option_strings[0]) for a in group._group_actions)
        parts.append(f"{'Exactly' if group.required else 'At most'} one of {flags}.")
    if parser.epilog:
        parts.append(parser.epilog[:1].upper() + parser.epilog[1:] + ".")
    sections = ["\n\n".join(parts)]
    for sub_name, sub_summary, sub in subcommands:
        sections += _command_part(sub_name, sub_summary, sub)
    return sections


def _exit_part() -> str:
    _check_exit_codes()
    rows = [(_code(code), _code(name) if name else "", meaning) for code, name, meaning in EXIT_CODES]
    return "\n\n".join(
        [
            "## Exit codes",
            "Every command ends with one of these (`echo $?` shows it). Bad input is one line on stderr "
            "that starts with `error:`; a warning is a line that starts with `warning:` and changes no code.",
            _table(("code", "in orchestrator/cli.py", "meaning"), rows),
        ]
    )


def cli_reference(parser: argparse.ArgumentParser | None = None) -> str:
    """The Markdown of docs/cli.md for ``parser`` (the CLI's, by default)."""
    parser = parser or cli.build_parser()
    intro = f"""\
# The command line

<!-- Written by `{COMMAND}` from the parser in orchestrator/cli.py:
change the parser there and run it again; do not edit this page. -->

`{parser.prog}`: {parser.description[:1].lower() + parser.description[1:]}
Every command takes `-h` / `--help`. A flag that sets a model or training setting (`--depth`,
`--lr`, …) defaults to that setting's default, which [the sweep file's reference](sweep-file.md)
lists under the key shown."""
    parts = [intro, f"```text\n{_synopsis(parser)}\n```"]
    commands = _subcommands(parser)
    parts.append(
        _table(
            ("command", "what it does"),
            [(f"[`{parser.prog} {n}`](#{anchor(s.prog)})", h) for n, h, s in commands]
            + [("[exit codes](#exit-codes)", "what each exit code means")],
        )
    )
    for name, summary, sub in commands:
        parts += _command_part(name, summary, sub)
    parts.append(_exit_part())
    return "\n\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    return page_main(
        argv,
        prog=COMMAND,
        description="Write docs/cli.md from resnet-sweep's parser, or check it is current.",
        path=REFERENCE_PATH,
        page=cli_reference,
    )


if __name__ == "__main__":
    sys.exit(main())
