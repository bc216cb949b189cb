"""How every script reads its command line, so that a flag works the same typed in a shell, passed as
`mlflow run -P key=value`, or set in a study spec.

`mlflow run` turns a -P key that the MLproject does not declare into `--key value`, the key spelled with
underscores. So, for every command built with `cls=Command` (or `Group`):
- each option also answers to its name with underscores (`--dev_dataset x`); `--help` and error messages
  still name it once, with dashes;
- a switch takes an optional boolean value: `--bf16`, `--bf16 true`, `--bf16=false` (`--no-packing` stays);
  a value click cannot read as a boolean is refused naming the switch;
- an option that takes several paths (`multiple`) also takes them in one value separated by os.pathsep
  (`--dataset a.json:b.json`), as click itself reads such an option from an environment variable.
"""

import os
from typing import Any

import click


class _WithUnderscores:
    """Registers each option with the parser under its names and the same names with underscores."""

    def __init__(self, parser) -> None:
        self.parser = parser

    def add_option(self, obj: click.Option, opts: list[str], dest: str | None, **settings: Any) -> None:
        aliases = [f"--{opt[2:].replace('-', '_')}" for opt in opts if opt.startswith("--") and "-" in opt[2:]]
        self.parser.add_option(obj=obj, opts=[*opts, *aliases], dest=dest, **settings)


class _Option(click.Option):
    """click's Option with the conventions above; its help and errors are click's own."""

    def add_to_parser(self, parser, ctx: click.Context) -> None:
        parser = _WithUnderscores(parser)
        if not self.is_bool_flag:
            super().add_to_parser(parser, ctx)
            return
        # `store` with `_flag_needs_value` (set by `apply_conventions`): the value may be left out, and the
        # next word is taken as the value unless it is an option itself.
        parser.add_option(obj=self, opts=self.opts, dest=self.name, action="store", nargs=1)
        if self.secondary_opts:
            parser.add_option(obj=self, opts=self.secondary_opts, dest=self.name, action="store_const", const=False)

    def type_cast_value(self, ctx: click.Context, value: Any) -> Any:
        if self.multiple and isinstance(self.type, click.Path) and isinstance(value, list | tuple):
            value = [part for item in value for part in str(item).split(os.pathsep) if part]
        return super().type_cast_value(ctx, value)


def apply_conventions(command: click.Command) -> click.Command:
    """Give `command` (built by click elsewhere) the conventions of this module; returns it."""
    for param in command.params:
        # click has built the options already: only how they read their words changes, so the class does.
        if type(param) is click.Option:
            param.__class__ = _Option
            if param.is_bool_flag:
                param._flag_needs_value = True
    return command


class Command(click.Command):
    """A click command that follows this module's conventions: `@click.command(cls=Command)`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        apply_conventions(self)


class Group(click.Group):
    """A click group whose own options and subcommands follow this module's conventions."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        apply_conventions(self)

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        super().add_command(apply_conventions(cmd), name)
