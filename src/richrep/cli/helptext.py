"""Help in the command line's own words.

Typer (from 0.27) prints a parameter's Python type (``<list[str]>``, ``<bool>``, ``<path>``) and
a required argument as ``{name}``, and keeps a docstring's line breaks in the list of commands.
:class:`HelpGroup` shows instead an argument or a value by name in capitals (``EXPERIMENT``,
``DIR``, ``KEY=VALUE``), a flag alone, choices as ``<a|b|c>``, and a docstring's
paragraphs as the terminal wraps them."""

from __future__ import annotations

import inspect
from typing import Any

from typer.core import TyperArgument, TyperGroup


class _Argument(TyperArgument):
    """An argument shown by its name: ``EXPERIMENT``, ``[OUT]``, ``[KEY=VALUE]...``."""

    def display_type_rich(self, ctx: Any) -> str | None:
        shown = super().display_type_rich(ctx)
        return shown if shown and "|" in shown else None  # choices, never a Python type

    def get_usage_pieces(self, ctx: Any) -> list[str]:
        name = self.metavar or ""
        name = name if self.required else f"[{name}]"
        return [name + ("..." if self.nargs != 1 else "")]


def _plain(param: Any, ctx: Any) -> Any:
    if type(param) is TyperArgument:
        param.__class__ = _Argument  # its choices stay listed beside its name
        param.metavar = param.metavar or (param.name or "").upper()
    elif param.metavar is None:
        if getattr(param, "is_flag", False):
            param.metavar = ""  # a flag takes no value
        elif "|" not in (param.display_type_rich(ctx) or ""):  # an option's choices stay listed
            param.metavar = (param.name or "").upper()
    return param


def _paragraphs(help_text: str) -> list[str]:
    """A docstring's paragraphs, each as one line (Typer's ``\\b`` paragraphs as written)."""
    parts = inspect.cleandoc(help_text).split("\n\n")
    return [p if p.startswith("\b") else " ".join(p.split()) for p in parts]


class HelpGroup(TyperGroup):
    """A command group whose help, and its commands' help, name what to type."""

    def get_params(self, ctx: Any) -> list[Any]:
        return [_plain(p, ctx) for p in super().get_params(ctx)]

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        command = super().get_command(ctx, cmd_name)
        if command is None or isinstance(command, TyperGroup):  # a group plains its own
            return command
        if command.help:
            command.help = "\n\n".join(_paragraphs(command.help))
            command.short_help = command.short_help or _paragraphs(command.help)[0]
        help_option = command.get_help_option(ctx) if ctx is not None else None
        for p in [*command.params, *([help_option] if help_option is not None else [])]:
            _plain(p, ctx)
        return command
