"""`streamgate completion bash|zsh|fish`: shell completion scripts, made from the command's own
argument parser (so they never fall behind a new flag).

Completes subcommands, their flags, and the fixed choices of a flag (`-o json`); file paths
where a flag takes one.
"""

from __future__ import annotations

import argparse

SHELLS = ("bash", "zsh", "fish")


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _flags(parser: argparse.ArgumentParser) -> list[tuple[list[str], list[str]]]:
    """Each optional argument's spellings and fixed choices."""
    out = []
    for action in parser._actions:
        if action.option_strings:
            choices = [str(c) for c in action.choices] if action.choices else []
            out.append((list(action.option_strings), choices))
    return out


def bash(parser: argparse.ArgumentParser, prog: str = "streamgate") -> str:
    commands = _commands(parser)
    top = " ".join([*commands, *(s for f, _ in _flags(parser) for s in f)])
    cases = []
    for name, sub in commands.items():
        flags = " ".join(s for f, _ in _flags(sub) for s in f)
        choice_cases = "".join(
            f'      {"|".join(f)}) COMPREPLY=($(compgen -W "{" ".join(c)}" -- "$cur")); return;;\n'
            for f, c in _flags(sub)
            if c
        )
        cases.append(
            f'    {name})\n      case "$prev" in\n{choice_cases}'
            f"      esac\n"
            f'      COMPREPLY=($(compgen -W "{flags}" -- "$cur") $(compgen -f -- "$cur"));;\n'
        )
    fn = f"_{prog.replace('-', '_')}"
    return (
        f"# bash completion for {prog}: source <({prog} completion bash)\n"
        f"{fn}() {{\n"
        "  local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]}\n"
        "  local cmd=${COMP_WORDS[1]}\n"
        '  if [ "$COMP_CWORD" -eq 1 ]; then\n'
        f'    COMPREPLY=($(compgen -W "{top}" -- "$cur")); return\n'
        "  fi\n"
        '  case "$cmd" in\n' + "".join(cases) + "  esac\n}\n"
        f"complete -F {fn} {prog}\n"
    )


def zsh(parser: argparse.ArgumentParser, prog: str = "streamgate") -> str:
    return (
        f"#compdef {prog}\n# zsh completion for {prog}: source <({prog} completion zsh)\n"
        "autoload -U +X bashcompinit && bashcompinit\n" + bash(parser, prog)
    )


def fish(parser: argparse.ArgumentParser, prog: str = "streamgate") -> str:
    commands = _commands(parser)
    lines = [f"# fish completion for {prog}: {prog} completion fish | source"]
    lines.append(f"complete -c {prog} -f")
    for name, sub in commands.items():
        lines.append(f"complete -c {prog} -n '__fish_use_subcommand' -a {name}")
        for spellings, choices in _flags(sub):
            opts = " ".join(
                f"-l {s[2:]}" if s.startswith("--") else f"-s {s[1:]}" for s in spellings
            )
            extra = f" -x -a '{' '.join(choices)}'" if choices else " -r -F"
            lines.append(
                f"complete -c {prog} -n '__fish_seen_subcommand_from {name}' {opts}{extra}"
            )
    return "\n".join(lines) + "\n"


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    return {"bash": bash, "zsh": zsh, "fish": fish}[shell](parser)
