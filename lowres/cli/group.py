"""The ``lowres`` command group: logging options, and library errors turned into one line with
exit code 2 (click's usage errors too)."""

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
    """Click group that turns library errors, and click's own usage errors in a command's
    options, into one clear line and exit code 2 (click would print a usage block first)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except LowresError as exc:
            raise BadInput(str(exc)) from None
        except OSError as exc:
            # A path the commands could not check ahead (a read-only disk, a full one, a file
            # removed meanwhile): still one line, not a traceback.
            if exc.filename is None:
                raise
            raise BadInput(
                f"{exc.strerror or exc}: {exc.filename}; check the path, its permissions and the "
                "free disk space"
            ) from None
        except click.UsageError as exc:
            where = ctx.command_path
            if exc.ctx is not None and exc.ctx is not ctx:
                where = exc.ctx.command_path
            elif ctx.invoked_subcommand:
                where = f"{where} {ctx.invoked_subcommand}"
            raise BadInput(f"{exc.format_message()} ({where} -h lists the options)") from None


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
