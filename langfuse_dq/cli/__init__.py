"""The ``langfuse-dq`` command line: a thin click layer over the library.

Each command family lives in a module of its own (flush, status, quarantine, worker, check,
demo, dev-server); they call the same functions an application would. Errors print one
line on stderr, with a traceback only under ``--debug``.
"""

from __future__ import annotations

import sys
from typing import Any, Optional

import click

from .. import __version__
from .common import CliError
from .demo import demo
from .devserver import dev_server
from .flush import flush
from .quarantine import quarantine
from .status import status
from .worker import check, worker


class _Group(click.Group):
    """Turns expected failures into one line on stderr and the documented exit status."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CliError as exc:
            if exc.debug:
                raise
            click.echo(f"langfuse-dq: {exc.message}", err=True)
            ctx.exit(exc.code)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except KeyboardInterrupt:
            click.echo("langfuse-dq: interrupted", err=True)
            ctx.exit(130)
        except Exception as exc:
            if "--debug" in sys.argv:
                raise
            click.echo(
                f"langfuse-dq: error: {type(exc).__name__}: {exc} (use --debug for details)",
                err=True,
            )
            ctx.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="langfuse-dq")
def cli() -> None:
    """langfuse-dq: get every LLM trace into Langfuse, crash-safe.

    Events are written to a queue directory on local disk by your app, and delivered by a
    flusher process. These commands drain, inspect and repair that queue.
    """


cli.add_command(flush)
cli.add_command(status)
cli.add_command(quarantine)
cli.add_command(worker)
cli.add_command(check)
cli.add_command(demo)
cli.add_command(dev_server)


def main(argv: Optional[list[str]] = None) -> None:
    """Console-script entry point."""
    cli.main(args=argv, prog_name="langfuse-dq")
