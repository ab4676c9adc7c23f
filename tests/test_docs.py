"""The docs stay true: shell commands in their code blocks parse and use flags that exist, and the
repository files they name exist.

Checked in README.md, CHANGELOG.md and docs/*.md:

* every ``bash``/``sh`` code block line that runs a Python script (``python scripts/X.py``,
  ``torchrun ... scripts/X.py``, ``python -m module``) names an existing one, and each ``--flag`` it passes
  after the script appears in that script's ``--help``;
* every ``snakemake`` command uses only options listed by ``snakemake --help``, and the files it
  passes to ``--configfile``/``--profile``/``--workflow-profile`` exist;
* every ``make`` target is a target of the Makefile; ``pytest`` commands name existing test files
  and registered markers;
* every repository path in backticks (``tests/...``, ``workflow/...``, ...) exists.
"""

from __future__ import annotations

import functools
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", REPO / "CHANGELOG.md", *sorted((REPO / "docs").glob("*.md"))]
REPO_DIRS = ("src/", "tests/", "scripts/", "benchmarks/", "workflow/", "config/", "docs/", "profiles/")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
SHELLS = {"bash", "sh", "shell", "console"}  # unlabelled blocks hold output, not commands


def _commands(text: str) -> list[str]:
    """Shell commands of a code block: continuation lines joined, comments dropped, split at && ; |."""
    joined = re.sub(r"\\\n\s*", " ", text)
    commands = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            words = shlex.split(line, comments=True)
        except ValueError as error:
            raise AssertionError(f"does not parse as a shell command: {line!r} ({error})") from None
        current: list[str] = []
        for word in words:
            if word in ("&&", ";", "||", "|"):
                commands.append(current)
                current = []
            else:
                current.append(word)
        commands.append(current)
    return [c for c in commands if c]


def _blocks():
    for doc in DOCS:
        for match in FENCE.finditer(doc.read_text()):
            if match.group(1) in SHELLS:
                yield doc, match.group(2)


def _all_commands():
    found = []
    for doc, block in _blocks():
        for words in _commands(block):
            while words and ("=" in words[0] and not words[0].startswith("-")) or words[:1] in (["sudo"], ["export"]):
                if words[0] == "export":
                    words = []
                    break
                words = words[1:]
            if words:
                found.append((doc.relative_to(REPO).as_posix(), words))
    return found


COMMANDS = _all_commands()


def _flags(words: list[str]) -> list[str]:
    return [w.split("=", 1)[0] for w in words if w.startswith("--") and len(w) > 2]


@functools.cache
def _help(argv: tuple[str, ...]) -> str:
    run = subprocess.run([*argv, "--help"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, f"{' '.join(argv)} --help failed:\n{run.stderr[-2000:]}"
    return run.stdout


def _python_script(words: list[str]) -> tuple[tuple[str, ...], int] | None:
    """(argv that prints the script's --help, index of its first argument) for a command running a Python script."""
    for i, word in enumerate(words):
        if word.endswith(".py") and word.startswith(("scripts/", "benchmarks/")):
            return (sys.executable, str(REPO / word)), i + 1
        if word == "-m" and i and Path(words[i - 1]).name.startswith("python") and words[i + 1].startswith("multiexit"):
            return (sys.executable, "-m", words[i + 1]), i + 2
    return None


def _parser_sources(argv: tuple[str, ...]) -> list[Path]:
    """Files whose argparse calls define a script's flags: the script, or for ``-m multiexit...lm_eval`` lm-eval's CLI."""
    if argv[1] != "-m":
        return [Path(argv[-1])]
    import importlib.util

    # located by path, not imported (importing multiexit.lm_eval imports lm-eval: minutes on a loaded machine)
    base = REPO / "src" / Path(*argv[2].split("."))
    files = [base / "__main__.py", base / "__init__.py", base.with_suffix(".py")]
    if argv[2].endswith("lm_eval"):  # lm-eval's own command line with the multi-exit model registered
        lm_eval = Path(importlib.util.find_spec("lm_eval").origin).parent  # a top-level find_spec imports nothing
        files += sorted((lm_eval / "_cli").glob("*.py")) + [lm_eval / "__main__.py"]
    return [f for f in files if f.is_file()]


def test_docs_have_commands_to_check():
    kinds = {words[0] for _, words in COMMANDS}
    assert {"snakemake", "make"} <= kinds and any(_python_script(w) for _, w in COMMANDS)


@pytest.mark.parametrize("doc,words", [c for c in COMMANDS if _python_script(c[1])],
                         ids=lambda v: v if isinstance(v, str) else " ".join(v)[:60])
def test_python_script_commands_use_existing_flags(doc, words):
    argv, first = _python_script(words)
    assert Path(argv[-1]).is_file() or argv[1] == "-m", f"{doc}: {argv[-1]} does not exist"
    flags = _flags(words[first:])
    # the parsers' add_argument calls first (no subprocess: imports take minutes on a loaded machine), then
    # the real --help for anything not found there
    declared = set()
    for source in _parser_sources(argv):
        declared |= set(re.findall(r'add_argument\(\s*(?:"-\w",\s*)?"(--[\w-]+)"', source.read_text()))
    unknown = [flag for flag in flags if flag not in declared]
    if unknown:
        usage = _help(argv)
        if re.search(r"^\s+run\b", usage, re.MULTILINE):  # a subcommand CLI (lm-eval): legacy flags belong to `run`
            usage += _help((*argv, "run"))
        unknown = [flag for flag in unknown if not re.search(rf"(^|[\s,\[]){re.escape(flag)}\b", usage)]
    assert not unknown, f"{doc}: {' '.join(words)}: {' '.join(argv[1:])} has no {unknown}"


def test_repository_files_in_commands_exist():
    for doc, words in COMMANDS:
        for word in words:
            value = word.split("=", 1)[-1]
            if value.startswith(REPO_DIRS) and not any(ch in value for ch in "*<>{}"):
                assert (REPO / value).exists(), f"{doc}: {' '.join(words)}: {value} does not exist"


SNAKEMAKE_FILE_OPTIONS = ("--configfile", "--profile", "--workflow-profile", "--snakefile")


@pytest.mark.parametrize("doc,words", [c for c in COMMANDS if c[1][0].endswith("snakemake")],
                         ids=lambda v: v if isinstance(v, str) else " ".join(v)[:60])
def test_snakemake_commands_use_existing_options_and_files(doc, words):
    usage = _help((str(Path(sys.executable).parent / "snakemake"),))
    missing = [flag for flag in _flags(words[1:]) if not re.search(rf"(^|[\s,]){re.escape(flag)}\b", usage)]
    assert not missing, f"{doc}: {' '.join(words)}: snakemake has no {missing}"
    for i, word in enumerate(words):
        if word in SNAKEMAKE_FILE_OPTIONS:
            for value in words[i + 1:]:
                if value.startswith("-"):
                    break
                if value.startswith(REPO_DIRS):
                    assert (REPO / value).exists(), f"{doc}: {' '.join(words)}: {value} does not exist"


def test_make_targets_exist():
    targets = set(re.findall(r"^([\w-]+):", (REPO / "Makefile").read_text(), re.MULTILINE))
    for doc, words in COMMANDS:
        if words[0] == "make":
            wanted = [w for w in words[1:] if not w.startswith("-") and "=" not in w]
            assert set(wanted) <= targets, f"{doc}: make {' '.join(wanted)}: no such target (have {sorted(targets)})"


def test_pytest_commands_name_existing_files_and_markers():
    markers = set(re.findall(r'^\s*"(\w+):', (REPO / "pyproject.toml").read_text(), re.MULTILINE))
    for doc, words in COMMANDS:
        if "pytest" not in words[:4]:
            continue
        start = words.index("pytest")
        for i, word in enumerate(words[start:], start):
            if word.startswith("tests/"):
                assert (REPO / word.split("::")[0]).exists(), f"{doc}: {' '.join(words)}: {word} does not exist"
            if word == "-m":
                named = set(re.findall(r"\w+", words[i + 1])) - {"not", "and", "or"}
                assert named <= markers, f"{doc}: {' '.join(words)}: unknown markers {named - markers}"


PATH_IN_BACKTICKS = re.compile(r"`((?:%s)[\w./-]+)`" % "|".join(re.escape(d) for d in REPO_DIRS))


def test_repository_paths_named_in_docs_exist():
    missing = []
    for doc in DOCS:
        for match in PATH_IN_BACKTICKS.finditer(doc.read_text()):
            path = match.group(1).rstrip(".")
            if any(ch in path for ch in "*<>{}") or path.startswith("results/"):
                continue
            if not (REPO / path).exists():
                missing.append(f"{doc.relative_to(REPO)}: {path}")
    assert not missing, "\n".join(missing)
