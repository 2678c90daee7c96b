"""Every command in README.md and docs/*.md, as a newcomer would type it.

Commands are read from ```bash, ```sh, ```shell and ```console blocks (in ```console only the
`$ ` lines), and from unlabelled blocks' lines that start with a known program; ```text blocks
are output. Each `resnet-sweep …` line parses with the CLI's own parser, so a flag that does not
exist or a missing argument fails, naming the page, line and command; one that names a sweep
file of the checkout also has its `--set` overrides validated, as the command would at once. The
cheap ones (`--help`, `plan`, `describe`, `k8s render`, `kubectl kustomize`, `python -m … --check`)
run for real from an empty working folder, with the checkout's paths (sweeps/…, k8s/…) given
whole, and must exit 0. Commands with placeholders (NAME, FILE, SWEEP.yaml, HEAD_IP, <…>, …)
and the expensive ones (run, resume, train, ui, report, …) are parsed only; other programs (pip,
git, docker, kubectl apply, ray, …) are listed, not run.

`python -m tests.test_docs_commands` prints every command found and what these tests do with it.
"""

from __future__ import annotations

import io
import os
import re
import shlex
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from functools import cache
from pathlib import Path, PurePosixPath

import pytest

from orchestrator.cli import build_parser
from tests.support import BIN, KUBECTL, REPO

SHELL_LANGUAGES = {"bash", "sh", "shell", "console", "zsh", "shell-session"}
# An unlabelled block's line is a command when it starts with one of these (else it is output).
PROGRAMS = {
    "resnet-sweep", "kubectl", "python", "python3", "pip", "pip3", "git", "docker", "helm", "ray",
    "mlflow", "pytest", "hadolint", "kubernetes-validate", "curl", "wget", "export", "cd", "source",
    "aws", "mc", "nvidia-smi", "ruff",
}  # fmt: skip
# `resnet-sweep` commands that start nothing and read only the files named: these run for real.
CHEAP = {"describe", "plan", "k8s render"}
# ... except with these flags (a timed training; the state of an earlier sweep).
NOT_CHEAP = {"--calibrate", "--extend"}
PLACEHOLDER = re.compile(r"…|\.\.\.|«|\$|\b[A-Z][A-Z0-9_]+\b")
FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")
ASSIGNMENT = re.compile(r"^[A-Za-z_]\w*=")
ELLIPSIS = {"…", "..."}
# Flags that name what a command writes: never a path of the checkout, whatever the word.
OUTPUT_FLAGS = {"--out", "--json-out", "--checkpoint-dir", "--storage-path"}
# Sanity floors for the extraction: fewer means the extractor broke, not that the docs shrank.
AT_LEAST = {"shell commands": 20, "resnet-sweep commands": 10, "commands run": 4}
KINDS_RUN = {"resnet-sweep describe", "resnet-sweep plan", "resnet-sweep k8s render", "kubectl kustomize"}


@dataclass(frozen=True)
class Command:
    """One simple command of a doc's shell line (a line may hold several: `a | b && c`)."""

    doc: str  # the page, relative to the checkout
    number: int  # its line in the page
    text: str  # the whole line as written (continuations joined)
    argv: tuple[str, ...]  # program and words: variables expanded, redirections and env prefix out
    env: tuple[tuple[str, str], ...] = ()  # VAR=value before the program
    where: str = "."  # folder of the checkout it runs in (after a `cd`); "" when elsewhere
    files: tuple[tuple[str, str], ...] = ()  # written earlier in the block (cat > FILE <<EOF)

    def __str__(self) -> str:
        return f"{self.doc}:{self.number}: {self.text}"

    @property
    def program(self) -> str:
        return PurePosixPath(self.argv[0]).name or self.argv[0]

    @property
    def subcommand(self) -> str:
        """`resnet-sweep`'s command (`k8s render` in two words), else ''."""
        words = [w for w in self.argv[1:] if not w.startswith("-")]
        if self.program != "resnet-sweep" or not words:
            return ""
        return " ".join(words[:2]) if words[0] == "k8s" else words[0]


# --- reading the docs --------------------------------------------------------------------------


def doc_pages() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def strip_comment(text: str) -> str:
    """The line without its `# comment` (a # that starts a word outside quotes, as bash reads it)."""
    quote, escaped = "", False
    for i, c in enumerate(text):
        if escaped:
            escaped = False
        elif c == "\\" and quote != "'":
            escaped = True
        elif quote:
            quote = "" if c == quote else quote
        elif c in "'\"":
            quote = c
        elif c == "#" and (i == 0 or text[i - 1].isspace()):
            return text[:i]
    return text


def _starts_a_command(text: str) -> bool:
    """An unlabelled block's line that starts, at the block's indentation, with a known program."""
    if text[:1].isspace():
        return False
    words = [w for w in text.split() if not ASSIGNMENT.match(w)]
    # `kubectl`, `.venv/bin/pip`; not `k8s/images/mlflow/` (a file tree's line)
    return bool(words) and (words[0] in PROGRAMS or bool(re.fullmatch(rf"\S*bin/({'|'.join(PROGRAMS)})", words[0])))


def shell_lines(text: str) -> list[tuple[int, int, str, str | None]]:
    """(block, line number, command line, here-document) of every shell command in a Markdown
    text; a block is named by the line of its opening fence."""
    raw = text.splitlines()
    found: list[tuple[int, int, str, str | None]] = []
    i = 0
    while i < len(raw):
        m = FENCE.match(raw[i])
        if not m:
            i += 1
            continue
        indent, fence, language = m.group(1), m.group(2), m.group(3).lower()
        block = i + 1
        close = re.compile(rf"^\s*{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        body: list[tuple[int, str]] = []
        i += 1
        while i < len(raw) and not close.match(raw[i]):
            line = raw[i]
            body.append((i + 1, line[len(indent) :] if line.startswith(indent) else line.lstrip()))
            i += 1
        i += 1
        if language in SHELL_LANGUAGES or language == "":
            found += [(block, *line) for line in _block_lines(body, language)]
    return found


def _block_lines(body: list[tuple[int, str]], language: str) -> list[tuple[int, str, str | None]]:
    console = language in ("console", "shell-session")
    found = []
    k = 0
    while k < len(body):
        number, text = body[k]
        k += 1
        prompt = re.match(r"^\$\s+", text)
        if prompt:
            text = text[prompt.end() :]
        elif console or (language == "" and not _starts_a_command(text)):
            continue  # output
        text = strip_comment(text).rstrip()
        while (text.endswith("\\") or re.search(r"(\||&&)$", text)) and k < len(body):
            more = body[k][1]
            k += 1
            if console:
                more = re.sub(r"^>\s?", "", more)
            text = (text[:-1] if text.endswith("\\") else text).rstrip() + " " + strip_comment(more).strip()
            text = text.rstrip()
        if not text.strip():
            continue
        heredoc = None
        if m := re.search(r"<<-?\s*(['\"]?)([A-Za-z_]\w*)\1", text):
            text = (text[: m.start()] + text[m.end() :]).rstrip()
            lines = []
            while k < len(body) and body[k][1].strip() != m.group(2):
                lines.append(body[k][1])
                k += 1
            k += 1
            heredoc = "\n".join(lines) + "\n"
        found.append((number, text.strip(), heredoc))
    return found


def _words(text: str) -> list[str]:
    """The line split as a shell splits it: quotes removed, operators and redirections as words."""
    text = re.sub(r"<([A-Za-z][^<>\n]*?[A-Za-z0-9])>", lambda m: "«" + re.sub(r"\s+", "-", m.group(1)) + "»", text)
    text = re.sub(r"(?<=\s)\d+(?=>)", "", text)  # 2>&1, 2>/dev/null: the descriptor goes with its operator
    lex = shlex.shlex(text, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    lex.commenters = ""
    return list(lex)


def _expand(word: str, variables: dict[str, str]) -> list[str]:
    """$VAR and ${VAR} the block set; a word that is only a variable is split, as bash does."""
    m = re.fullmatch(r"\$(?:(\w+)|\{(\w+)\})", word)
    if m and (m.group(1) or m.group(2)) in variables:
        return variables[m.group(1) or m.group(2)].split()
    return [re.sub(r"\$(?:(\w+)|\{(\w+)\})", lambda v: variables.get(v[1] or v[2], v[0]), word)]


def commands_in(text: str, doc: str) -> tuple[list[Command], list[str]]:
    """Every simple command of a Markdown text's shell blocks, and the lines a shell cannot split."""
    commands, broken = [], []
    variables: dict[str, str] = {}
    where, clone, files = ".", None, {}
    previous_block = None
    for block, number, line, heredoc in shell_lines(text):
        if block != previous_block:  # state lasts for one block
            variables, where, clone, files, previous_block = {}, ".", None, {}, block
        try:
            words = _words(line)
        except ValueError as err:
            broken.append(f"{doc}:{number}: {line}  ({err})")
            continue
        for segment in _segments(words):
            argv, env, target = _simple_command(segment, variables)
            if not argv:
                if env:
                    variables.update(env)
                continue
            name = PurePosixPath(argv[0]).name
            if name == "export":
                variables.update(a.split("=", 1) for a in argv[1:] if ASSIGNMENT.match(a))
            elif name == "git" and argv[1:2] == ["clone"]:
                rest = [a for a in argv[2:] if not a.startswith("-")]
                clone = rest[1] if len(rest) > 1 else PurePosixPath(rest[0]).name.removesuffix(".git") if rest else None
            elif name == "cd":
                where = _cd(where, argv[1] if len(argv) > 1 else "~", clone)
            elif name in ("cat", "tee") and heredoc is not None and (target or argv[1:]):
                files[target or argv[1]] = heredoc
            commands.append(
                Command(doc, number, line, tuple(argv), tuple(env.items()), where, tuple(sorted(files.items())))
            )
    return commands, broken


def _segments(words: list[str]):
    """The simple commands of a line: split at |, &&, ||, ;, &, ( and )."""
    segment: list[str] = []
    for word in words:
        if word and set(word) <= set("|&;()"):
            if segment:
                yield segment
            segment = []
        else:
            segment.append(word)
    if segment:
        yield segment


def _simple_command(words: list[str], variables: dict[str, str]) -> tuple[list[str], dict[str, str], str | None]:
    """(words, VAR=value prefix, output file) of one simple command."""
    argv, env, target = [], {}, None
    skip = False
    for i, word in enumerate(words):
        if skip:
            skip = False
            continue
        if word and set(word) <= set("<>&|") and ("<" in word or ">" in word):
            skip = True  # the file (or descriptor) it redirects to
            if ">" in word and i + 1 < len(words) and "&" not in word:
                target = words[i + 1]
            continue
        if not argv and ASSIGNMENT.match(word):
            key, value = word.split("=", 1)
            env[key] = " ".join(_expand(value, {**variables, **env}))
            continue
        argv += _expand(word, {**variables, **env})
    return argv, env, target


def _cd(where: str, folder: str, clone: str | None) -> str:
    """The checkout folder after `cd folder` ("" when outside the checkout or unknown)."""
    if not where:
        return ""
    if folder in (clone, "resnet-sweep") and where == ".":
        return "."
    path = os.path.normpath(os.path.join(where, folder))
    return path if not folder.startswith(("/", "~", "$")) and path in checkout_paths() else ""


@cache
def checkout_paths() -> frozenset[str]:
    """Files a fresh clone holds (tracked, or new and not ignored), and their folders."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    files = [f for f in out.stdout.split("\0") if f] if out.returncode == 0 else []
    if not files:  # not a git checkout: what is on disk
        files = [p.relative_to(REPO).as_posix() for p in REPO.rglob("*") if p.is_file() and ".venv" not in p.parts]
    folders = {str(parent) for f in files for parent in PurePosixPath(f).parents}
    return frozenset(files) | frozenset(folders)


@cache
def all_commands() -> tuple[tuple[Command, ...], tuple[str, ...]]:
    commands, broken = [], []
    for page in doc_pages():
        found, bad = commands_in(page.read_text(), page.relative_to(REPO).as_posix())
        commands += found
        broken += bad
    return tuple(commands), tuple(broken)


# --- what to do with each command --------------------------------------------------------------


def _in_checkout(word: str, where: str) -> str | None:
    """The absolute path of a word that names a file or folder of the checkout (sweeps/x.yaml,
    k8s/overlays/s3, README.md; not a bare word such as `k8s` or `docs`), else None."""
    if not where or word.startswith(("-", "/", "~")) or "://" in word or not ("/" in word or "." in word[1:]):
        return None
    path = os.path.normpath(os.path.join(where, word))
    return str(REPO / path) if path in checkout_paths() and path != "." else None


def absolute(cmd: Command) -> tuple[str, ...]:
    """The command's words with the checkout's paths given whole (also in --flag=PATH)."""
    words = []
    for i, word in enumerate(cmd.argv):
        flag, eq, value = word.partition("=")
        if (eq and flag in OUTPUT_FLAGS) or (i and cmd.argv[i - 1] in OUTPUT_FLAGS):
            words.append(word)  # written, not read: stays in the working folder
        elif eq and flag.startswith("--") and (path := _in_checkout(value, cmd.where)):
            words.append(f"{flag}={path}")
        else:
            words.append(_in_checkout(word, cmd.where) or word)
    return tuple(words)


def placeholders(cmd: Command) -> list[str]:
    return [w for w in (*cmd.argv[1:], *(v for _, v in cmd.env)) if PLACEHOLDER.search(w)]


def disposition(cmd: Command) -> tuple[str, str]:
    """("run" | "parse" | "skip", why)."""
    argv = cmd.argv
    if cmd.program == "resnet-sweep":
        if holes := placeholders(cmd):
            return "parse", f"placeholder {holes[0]}"
        if not cmd.where:
            return "parse", "after a cd outside the checkout"
        if {"-h", "--help"} & set(argv):
            return "run", "help"
        if cmd.subcommand in CHEAP and not NOT_CHEAP & set(argv):
            return "run", cmd.subcommand
        return "parse", f"{cmd.subcommand or 'no command'}: not cheap"
    if cmd.program == "kubectl" and argv[1:2] == ("kustomize",):
        if holes := placeholders(cmd):
            return "skip", f"placeholder {holes[0]}"
        return ("run", "kubectl kustomize") if cmd.where else ("skip", "after a cd outside the checkout")
    if cmd.program.startswith("python") and argv[1:2] == ("-m",) and "--check" in argv and not placeholders(cmd):
        return "run", "generator check"
    return "skip", f"{cmd.program}: not this project's command"


# --- parsing with the CLI's parser -------------------------------------------------------------


@cache
def all_flags() -> frozenset[str]:
    """Every option of every `resnet-sweep` command."""
    found = set()
    stack = [build_parser()]
    while stack:
        parser = stack.pop()
        for action in parser._actions:
            found.update(action.option_strings)
            if action.choices and isinstance(action.choices, dict):
                stack += action.choices.values()
    return frozenset(found)


def parse_problem(cmd: Command) -> str | None:
    """Why `resnet-sweep` would refuse this line before doing anything (None: it would not)."""
    words = absolute(cmd)[1:]
    if words and PLACEHOLDER.fullmatch(words[0]):
        # `resnet-sweep … --tracking-uri URI`: the command is the reader's; its flags must exist
        unknown = [w.split("=")[0] for w in words if w.startswith("--") and w.split("=")[0] not in all_flags()]
        return f"no command has {', '.join(unknown)}" if unknown else None
    # A lone … stands for more flags (dropped) or for an argument (kept): either may parse.
    problem = None
    for variant in ([w for w in words if w not in ELLIPSIS], words) if ELLIPSIS & set(words) else (words,):
        args, problem = _parse(variant)
        if problem is None:
            return None if args is None else _spec_problem(args, cmd)
    return problem


def _parse(words) -> tuple[object, str | None]:
    """(namespace or None after --help, the parser's error or None)."""
    out, err = io.StringIO(), io.StringIO()
    try:
        with redirect_stdout(out), redirect_stderr(err):
            return build_parser().parse_args(words), None
    except SystemExit as exit:
        if exit.code in (0, None):
            return None, None  # --help
        message = err.getvalue().strip()
        bad = re.search(r"invalid \S+ value: '(.*)'", message)
        return None, None if bad and PLACEHOLDER.search(bad.group(1)) else message


def _spec_problem(args, cmd: Command) -> str | None:
    """The sweep file of the checkout with the line's --set overrides, validated as the command would."""
    sweep = getattr(args, "sweep", None)
    if sweep is None or not hasattr(args, "overrides") or not Path(sweep).is_absolute():
        return None
    if placeholders(cmd):
        return None
    from orchestrator.sweepfile.spec import SpecError, load_spec

    try:
        load_spec(sweep, args.overrides)
    except SpecError as err:
        return f"error: {err}"
    return None


# --- running -----------------------------------------------------------------------------------


def distinct_runs() -> dict[tuple, list[Command]]:
    """The commands to run, each distinct line once, with every place the docs give it."""
    runs: dict[tuple, list[Command]] = {}
    for cmd in all_commands()[0]:
        if disposition(cmd)[0] == "run":
            runs.setdefault((absolute(cmd), cmd.env, cmd.where, cmd.files), []).append(cmd)
    return runs


def execute(cmd: Command, folder: Path) -> subprocess.CompletedProcess:
    """The command run from ``folder`` (empty but for the files the block wrote), as a user runs it."""
    folder.mkdir(parents=True)
    for name, content in cmd.files:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(content)
    words = list(absolute(cmd))
    program = {"resnet-sweep": str(BIN / "resnet-sweep"), "kubectl": KUBECTL}.get(cmd.program)
    words[0] = program or (sys.executable if cmd.program.startswith("python") else words[0])
    # `python -m tests.…`: the tests are not installed; those run where they are, the checkout
    cwd = REPO if words[1:3] and words[1] == "-m" and words[2].startswith("tests.") else folder
    return subprocess.run(
        words, cwd=cwd, capture_output=True, text=True, timeout=300, env={**os.environ, **dict(cmd.env)}
    )


# --- tests -------------------------------------------------------------------------------------


@pytest.mark.unit
def test_extractor_reads_lines_as_a_shell_does():
    page = """
Intro `resnet-sweep inline` is prose.

```bash
# a comment
resnet-sweep k8s render sweeps/cifar_depth.yaml --image r/x:1 --gpus 8 \\
  --namespace ns | kubectl apply -f -   # trailing comment
A=1 B="two words" resnet-sweep plan sweeps/quickstart.yaml --set 'train.lr=1e-3' 2>&1 > out.txt
C="resnet-sweep train --dataset digits"
$C --depth 56 && echo done; resnet-sweep describe --depth 20 |
  head
git clone <this repository> resnet-sweep && cd resnet-sweep
cd k8s && kubectl kustomize overlays/s3
cat > my.yaml <<'EOF'
name: mine
EOF
resnet-sweep plan my.yaml
```

```console
$ resnet-sweep status NAME
output line, not a command
$ resnet-sweep describe \\
> --json
```

```text
resnet-sweep run output-not-a-command.yaml
```

```
  resnet-sweep run --address ───► drawing, not a command
k8s/images/mlflow/      a file tree, not a command
resnet-sweep resume …
```
"""
    commands, broken = commands_in(page, "page.md")
    assert broken == []
    got = [(c.number, c.argv, dict(c.env), c.where) for c in commands]
    assert got == [
        (6, ("resnet-sweep", "k8s", "render", "sweeps/cifar_depth.yaml", "--image", "r/x:1", "--gpus", "8",
             "--namespace", "ns"), {}, "."),
        (6, ("kubectl", "apply", "-f", "-"), {}, "."),
        (8, ("resnet-sweep", "plan", "sweeps/quickstart.yaml", "--set", "train.lr=1e-3"),
         {"A": "1", "B": "two words"}, "."),
        (10, ("resnet-sweep", "train", "--dataset", "digits", "--depth", "56"), {}, "."),
        (10, ("echo", "done"), {}, "."),
        (10, ("resnet-sweep", "describe", "--depth", "20"), {}, "."),
        (10, ("head",), {}, "."),
        (12, ("git", "clone", "«this-repository»", "resnet-sweep"), {}, "."),
        (12, ("cd", "resnet-sweep"), {}, "."),
        (13, ("cd", "k8s"), {}, "k8s"),
        (13, ("kubectl", "kustomize", "overlays/s3"), {}, "k8s"),
        (14, ("cat",), {}, "k8s"),
        (17, ("resnet-sweep", "plan", "my.yaml"), {}, "k8s"),
        (21, ("resnet-sweep", "status", "NAME"), {}, "."),
        (23, ("resnet-sweep", "describe", "--json"), {}, "."),
        (34, ("resnet-sweep", "resume", "…"), {}, "."),
    ]  # fmt: skip
    assert commands[12].files == (("my.yaml", "name: mine\n"),)
    assert absolute(commands[10])[2] == str(REPO / "k8s/overlays/s3")  # relative to the cd
    assert absolute(commands[0])[3] == str(REPO / "sweeps/cifar_depth.yaml")
    assert absolute(commands[2])[-1] == "train.lr=1e-3"  # not a path
    assert [disposition(c)[0] for c in commands] == [
        "run", "skip", "run", "parse", "skip", "run", "skip", "skip", "skip", "skip", "run", "skip", "run",
        "parse", "run", "parse",
    ]  # fmt: skip
    assert parse_problem(commands[5]) is None and parse_problem(commands[15]) is None
    wrong = commands_in("```bash\nresnet-sweep describe --depht 20\nresnet-sweep k8s render sweeps/quickstart.yaml\n```", "w.md")[0]  # fmt: skip
    assert "unrecognized arguments: --depht 20" in parse_problem(wrong[0])
    assert "--image" in parse_problem(wrong[1])
    bad_set = commands_in("```sh\nresnet-sweep run sweeps/quickstart.yaml --set train.lrr=1\n```", "s.md")[0]
    assert "train.lrr" in parse_problem(bad_set[0])
    assert commands_in("```bash\nresnet-sweep describe --json 'unclosed\n```", "q.md")[1] != []


@pytest.mark.unit
def test_the_docs_hold_the_commands_this_test_runs():
    """A broken extractor finds few commands, or runs none: it must not pass by testing nothing."""
    commands, _ = all_commands()
    runs = distinct_runs()
    found = {
        "shell commands": len(commands),
        "resnet-sweep commands": sum(c.program == "resnet-sweep" for c in commands),
        "commands run": len(runs),
    }
    assert all(found[k] >= n for k, n in AT_LEAST.items()), (found, AT_LEAST)
    kinds = {" ".join(filter(None, (c.program, c.subcommand or c.argv[1]))) for c, *_ in runs.values()}
    assert KINDS_RUN <= kinds, f"never run: {sorted(KINDS_RUN - kinds)} (run: {sorted(kinds)})"


@pytest.mark.unit
def test_every_resnet_sweep_command_in_the_docs_parses():
    commands, broken = all_commands()
    problems = [f"{line}: a shell cannot split it" for line in broken]
    for cmd in commands:
        if cmd.program == "resnet-sweep" and (problem := parse_problem(cmd)):
            problems.append(f"{cmd}\n    {problem}")
    assert problems == [], "\n".join(problems)


def test_the_cheap_commands_in_the_docs_run_from_an_empty_folder(tmp_path):
    runs = list(distinct_runs().values())
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda i: execute(runs[i][0], tmp_path / f"run{i}"), range(len(runs))))
    failures = [
        "\n".join(map(str, places)) + f"\n    exit {out.returncode}: {(out.stderr or out.stdout).strip()[-600:]}"
        for places, out in zip(runs, results)
        if out.returncode != 0
    ]
    assert failures == [], "\n".join(failures)


if __name__ == "__main__":
    commands, broken = all_commands()
    tally = Counter()
    for cmd in commands:
        what, why = disposition(cmd)
        tally[what] += 1
        print(f"{what:<5}  {why:<36}  {cmd.doc}:{cmd.number}: {' '.join(cmd.argv)}")
    print(f"\n{dict(tally)}; {len(distinct_runs())} distinct runs; {len(broken)} lines a shell cannot split")
