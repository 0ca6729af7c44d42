"""What the three commands share on the command line: usage errors as one line (click prints three)."""

from __future__ import annotations

import sys

import click

from tddfa_edge.contracts.errors import UsageError


class OneLineUsage(click.Command):
    """A click command whose usage errors are one line on stderr, ``<prog>: error: <what> (see <prog> --help)``, with
    exit code 2; the command's own exit code comes back through ``SystemExit``."""

    def usage_text(self, exc: click.ClickException) -> str:
        return " ".join(exc.format_message().split())

    def say(self, message: str) -> None:
        try:
            click.echo(f"{self.name}: {message}", err=True)
        except (OSError, ValueError):
            pass

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            code = super().main(args=args, prog_name=prog_name or self.name, complete_var=complete_var, standalone_mode=False, **extra)
        except click.ClickException as exc:
            self.say(f"error: {self.usage_text(exc)} (see {self.name} --help)")
            code = UsageError.exit_code
        except click.exceptions.Exit as exc:
            code = exc.exit_code
        except click.exceptions.Abort:
            self.say("interrupted")
            code = 130
        except BrokenPipeError:  # --help into a closed pipe
            code = 1
        if not isinstance(code, int):
            code = 0
        if standalone_mode:
            sys.exit(code)
        return code
