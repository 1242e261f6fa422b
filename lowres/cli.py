"""Command line interface. The only module that imports click.

Thin by design: each command parses options, calls library functions, and prints. Heavy imports
(torch, pandas, ...) live inside command bodies so ``lowres --help`` is instant. Exit codes:
0 ok, 1 check failed, 2 bad input (any ``LowresError`` becomes one line on stderr, no traceback).
"""

from __future__ import annotations

import logging
import sys

import click

from lowres import __version__
from lowres.errors import LowresError

log = logging.getLogger("lowres")


class BadInput(click.ClickException):
    """A LowresError shown as one line with exit code 2."""

    exit_code = 2

    def show(self, file=None) -> None:
        click.echo(f"Error: {self.format_message()}", err=True, file=file)


class LowresGroup(click.Group):
    """Click group that turns library errors into one clear line and exit code 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except LowresError as exc:
            raise BadInput(str(exc)) from None


@click.group(cls=LowresGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lowres")
@click.option("-v", "--verbose", count=True, help="More log output (repeat for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
def cli(verbose: int, quiet: bool) -> None:
    """lowres: how does a face-recognition model hold up as faces get smaller?"""
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)
    log.setLevel(level)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="lowres")


if __name__ == "__main__":
    main()
