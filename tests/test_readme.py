"""The README and docs stay true to the CLI: every `actlab ...` line in their shell blocks names a command that
exists, only (non-deprecated) options that command has, and no more arguments than it takes (parsed by the real
CLI, nothing run)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from doc_walk import DOCS, RUN_LANGS, blocks, shell_commands


def _shell_lines(path: Path) -> list[tuple[int, str]]:
    """`actlab ...` command lines of the shell blocks (skipped ones too: they must still name real options),
    read by the docs walk's parser (continuations joined, comments dropped)."""
    return [(b.line + 1 + off, cmd) for b in blocks(path) if b.lang in RUN_LANGS - {"python"}
            for off, cmd, _ in shell_commands(b.code)
            if cmd.startswith("actlab ") or re.match(r"^\w+=\S+ actlab ", cmd)]


def _inline(path: Path) -> list[tuple[int, str]]:
    """Inline `actlab ...` spans that are whole commands (not templates such as `actlab lfp <stage>`)."""
    out = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        for m in re.finditer(r"`(actlab [^`]+)`", line):
            cmd = m.group(1)
            if not re.search(r"[|<]|\.\.\.|[A-Z]{3,}", cmd):  # alternatives, placeholders, RUN_DIR-style names
                out.append((i, cmd))
    return out


CASES = [(p, n, cmd) for p in DOCS for n, cmd in [*_shell_lines(p), *_inline(p)]]


def test_the_docs_show_commands():
    assert len([c for c in CASES if c[0].name == "README.md"]) >= 20


@pytest.mark.parametrize("path,line,cmd", CASES, ids=[f"{p.name}:{n}" for p, n, _ in CASES])
def test_documented_command_matches_the_cli(path, line, cmd):
    from typer.main import get_command

    from actlab.cli.app import app

    words = shlex.split(cmd.split(" > ")[0].split(" | ")[0].replace("[", "").replace("]", ""))
    words = words[words.index("actlab") + 1:]
    group = get_command(app)
    node, rest = group, list(words)
    while rest and hasattr(node, "commands") and rest[0] in node.commands:
        node = node.commands[rest.pop(0)]
    if rest in (["--help"], []) and hasattr(node, "commands"):
        return  # `actlab --help`, `actlab steer`: a group's help
    assert not hasattr(node, "commands"), f"{path.name}:{line}: {cmd!r} does not name a command"
    opts: dict[str, bool] = {}  # option spelling -> takes a value
    n_args, variadic = 0, False
    for p in node.params:
        if getattr(p, "param_type_name", "") == "argument":
            n_args += 1
            variadic |= p.nargs == -1
            continue
        if getattr(p, "hidden", False):
            continue  # deprecated spellings still work but the docs show the current ones
        for name in [*p.opts, *p.secondary_opts]:
            opts[name] = not (p.is_flag or p.count)
    opts.update({"--help": False, "-v": False, "-q": False, "--debug": False, "-vv": False})
    positional, i = [], 0
    while i < len(rest):
        w = rest[i]
        if w.startswith("-") and not re.match(r"^-\d", w):
            name = w.split("=", 1)[0]
            assert name in opts, f"{path.name}:{line}: {node.name} has no option {name} (has: {sorted(opts)})"
            i += 2 if opts[name] and "=" not in w else 1
            continue
        positional.append(w)
        i += 1
    assert variadic or len(positional) <= n_args, (
        f"{path.name}:{line}: {node.name} takes {n_args} argument(s), the docs give {positional}")
