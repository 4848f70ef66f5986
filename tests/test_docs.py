"""The docs stay true: the site builds with warnings as errors, and every fenced block of the
README and docs/ runs — or is marked as an illustration by the HTML comment
``<!-- illustration: why -->`` on the line before it.

What "runs" means per block: a console or bash block holds cheap ``richrep`` commands (``--help``,
``--version``, ``list``), each run through the command line and exiting 0; a python block is
executed (``runs/quickstart-65365f7e2f`` replaced by a small finished run); a yaml block is
validated against the experiment schema (a fragment merged into the quickstart; ``--8<--``
includes read from their file). An illustration's ``richrep`` commands still parse, and the
experiment files and overrides they name are valid; a block that is neither fails."""

from __future__ import annotations

import copy
import inspect
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from markdown_it import MarkdownIt
from typer.main import get_command
from typer.testing import CliRunner

from richrep.cli import app
from richrep.config import load_experiment, parse_experiment

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
QUICKSTART_RUN = "runs/quickstart-65365f7e2f"
SHELL = {"console", "bash", "sh", "shell"}
runner = CliRunner()


@dataclass(frozen=True)
class Block:
    page: Path
    line: int
    lang: str
    text: str
    illustration: bool

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def _blocks(page: Path) -> list[Block]:
    tokens = MarkdownIt("commonmark").parse(page.read_text())
    out = []
    for i, t in enumerate(tokens):
        if t.type not in ("fence", "code_block"):
            continue
        before = tokens[i - 1] if i else None
        marked = (
            before is not None
            and before.type == "html_block"
            and before.content.strip().startswith("<!-- illustration")
        )
        lang = t.info.split()[0] if t.info.strip() else ""
        out.append(Block(page, t.map[0] + 1 if t.map else 0, lang, t.content, marked))
    return out


BLOCKS = [b for page in PAGES for b in _blocks(page)]


def _commands(text: str) -> list[list[str]]:
    """The ``richrep`` command lines of a shell block, as arguments after ``richrep``."""
    out = []
    for raw in text.splitlines():
        line = raw.strip().removeprefix("$ ").strip()
        if not line or line.startswith("#"):
            continue
        args = shlex.split(line, comments=True)
        if args and Path(args[0]).name == "richrep":
            out.append(args[1:])
    return out


def _is_cheap(args: list[str]) -> bool:
    return "--help" in args or args[:1] in (["--version"], ["list"])


def _check_parses(args: list[str], block: Block) -> None:
    """A command line the command line accepts, without running it; the experiment file and
    overrides of a ``run`` are valid (a sweep's combinations too)."""
    name, command, args = "richrep", get_command(app), list(args)
    while args and args[0] in getattr(command, "list_commands", lambda ctx: [])(None):
        name, command, args = args[0], command.get_command(None, args[0]), args[1:]
    with command.make_context(name, args) as sub:
        if name == "run" and sub.params["experiment"].parts[:1] == ("examples",):
            from richrep.config.overrides import load_with_overrides
            from richrep.sweeps import plan_sweep

            path = ROOT / sub.params["experiment"]
            assert path.is_file(), f"{block.id}: {path} does not exist"
            overrides = sub.params["overrides"] or []
            load_with_overrides(path, overrides)
            if sub.params["sweep"]:
                plan_sweep(path, sub.params["sweep"], overrides, None)


def _merge(base: dict[str, Any], part: dict[str, Any]) -> dict[str, Any]:
    """``part``'s sections over ``base``'s, key by key (a key's value replaced whole)."""
    out = copy.deepcopy(base)
    for k, v in part.items():
        out[k] = {**out[k], **v} if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _check_yaml(block: Block) -> None:
    include = re.fullmatch(r'--8<-- "([^"]+)"\s*', block.text)
    if include:
        load_experiment(ROOT / include.group(1))
        return
    part = yaml.safe_load(block.text)
    if {"name", "data"} <= set(part):
        parse_experiment(part, block.id)
        return
    base = yaml.safe_load((ROOT / "examples/quickstart.yaml").read_text())
    parse_experiment(_merge(base, part), block.id)


@pytest.fixture(scope="module")
def quickstart_like(tmp_path_factory):
    """A small finished run standing in for the quickstart's folder (MNIST-1D, classes 0–4)."""
    from tests.conftest import TINY

    from richrep.pipeline import run_experiment

    exp = copy.deepcopy(TINY)
    exp["training"]["epochs"] = 8  # trained past its random floor (fewer epochs warn, rightly)
    exp["evaluation"] = {
        "subsets": 1,
        "probe": {"Cs": [0.1, 1.0]},
        "suite": [{"name": "new", "shifts": [{"classes": {"keep": [5, 6, 7]}}], "sizes": [10]}],
        "floors": ["input", "random"],
    }
    out = tmp_path_factory.mktemp("docs") / "runs"
    return run_experiment(parse_experiment(exp), out, log=lambda m: None).store.root


def _run_python(block: Block, request: pytest.FixtureRequest) -> None:
    from richrep.registry import CATALOGUE

    code = block.text
    if QUICKSTART_RUN in code:
        code = code.replace(
            f'"{QUICKSTART_RUN}"', repr(str(request.getfixturevalue("quickstart_like")))
        )
    before = {kind: set(r._entries) for kind, r in CATALOGUE.items()}
    try:
        exec(compile(code, block.id, "exec"), {"__name__": "__docs__"})
    finally:  # what a block registers stays in its block
        for kind, r in CATALOGUE.items():
            for name in set(r._entries) - before.get(kind, set()):
                r.unregister(name)


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_every_code_block_runs_or_is_an_illustration(block, request):
    hint = f"{block.id}: mark it <!-- illustration: why --> if it cannot run in a test"
    if block.lang in SHELL:
        commands = _commands(block.text)
        if block.illustration:
            for args in commands:
                _check_parses(args, block)
            return
        lines = [
            raw
            for raw in block.text.splitlines()
            if raw.strip() and not raw.strip().startswith("#")
        ]
        assert len(commands) == len(lines), f"{hint}: only richrep commands run"
        for args in commands:
            assert _is_cheap(args), f"{hint}: richrep {' '.join(args)} is not a quick command"
            r = runner.invoke(app, args)
            assert r.exit_code == 0, f"{block.id}: richrep {' '.join(args)}\n{r.output}"
        return
    if block.illustration:
        return
    if block.lang == "python":
        _run_python(block, request)
    elif block.lang == "yaml":
        _check_yaml(block)
    else:
        pytest.fail(f"{hint} (a {block.lang or 'plain'} block)")


def test_the_python_api_example_keeps_every_seed(quickstart_like, capsys):
    """The API example prints one line per column with n over every seed, not the last seed's."""
    (block,) = [b for b in BLOCKS if b.page.name == "api.md" and QUICKSTART_RUN in b.text]
    code = block.text.replace(f'"{QUICKSTART_RUN}"', repr(str(quickstart_like)))
    exec(compile(code, block.id, "exec"), {"__name__": "__docs__"})
    single = [
        line for line in capsys.readouterr().out.splitlines() if line.split()[:1] == ["single"]
    ]
    assert len(single) == 1 and "(n=6)" in single[0], single  # 2 seeds × 3 draws


def test_the_docs_build_with_warnings_as_errors(tmp_path):
    start = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert (tmp_path / "site/api/index.html").read_text().count("richrep.run.Run") > 0
    assert time.perf_counter() - start < 120


def test_the_readme_and_docs_link_only_to_what_exists():
    for page in PAGES:
        text = page.read_text()
        assert "../shared" not in text, f"{page}: the facts belong in docs/, not ../shared"
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if "://" in target or target.startswith("mailto:"):
                continue
            assert (page.parent / target).exists(), f"{page.relative_to(ROOT)} links to {target}"


def _commands_of(group: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    out = []
    for name in group.list_commands(None):
        command = group.get_command(None, name)
        out.append(((*path, name), command))
        if hasattr(command, "list_commands"):
            out.extend(_commands_of(command, (*path, name)))
    return out


COMMANDS = [(), *(p for p, _ in _commands_of(get_command(app)))]


@pytest.mark.parametrize("path", COMMANDS, ids=[" ".join(p) or "richrep" for p in COMMANDS])
def test_help_names_what_to_type_never_a_python_type(path):
    r = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "400", "TERMINAL_WIDTH": "400"})
    assert r.exit_code == 0, r.output
    usage = next(line for line in r.output.splitlines() if "Usage:" in line)
    assert "{" not in usage, usage
    leaks = re.findall(r"<(?:bool|str|int|float|path|list\[[^\]]*\])>", r.output)
    assert leaks == [], leaks
    group = get_command(app)
    for name in path:
        group = group.get_command(None, name)
    for name in getattr(group, "list_commands", lambda ctx: [])(None):  # one line each
        summary = " ".join(
            inspect.cleandoc(group.get_command(None, name).help).split("\n\n")[0].split()
        )
        assert summary in r.output, f"the summary of {name} is broken:\n{r.output}"


@pytest.mark.parametrize("channels", ["0", "2", "4"])
def test_data_export_takes_the_channels_its_help_names(channels, tmp_path):
    help_text = runner.invoke(app, ["data", "export", "--help"]).output
    assert "1 (grey) or 3 (RGB)" in help_text
    r = runner.invoke(
        app, ["data", "export", "digits", str(tmp_path / "out"), "--channels", channels]
    )
    assert r.exit_code == 2 and "1 or 3" in r.output and not (tmp_path / "out").exists()


def test_make_demo_prints_the_next_command_with_its_run_folder():
    """`make demo` ends with the command to type next, naming the folder it wrote (no glob)."""
    venv = Path(sys.executable).parent.parent
    dry = subprocess.run(
        ["make", "-n", "demo", f"VENV={venv}"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    echo = [line for line in dry.stdout.splitlines() if line.startswith('echo "next:')]
    shown = subprocess.run(["bash", "-c", echo[-1]], cwd=ROOT, capture_output=True, text=True)
    run_id = load_experiment(ROOT / "examples/quickstart.yaml").run_id()
    assert shown.stdout.startswith(f"next: {venv}/bin/richrep results runs/{run_id} "), shown
