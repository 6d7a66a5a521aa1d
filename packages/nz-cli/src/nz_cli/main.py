"""The ``neuronetz-gateway`` command."""

from __future__ import annotations

import sys

import typer

from nz_cli import admin, demo, serve

__all__ = ["app", "main"]

app = typer.Typer(
    name="neuronetz-gateway",
    help=(
        "Run and administer neuronetz-gateway. Settings come from the environment and a .env"
        " file; docs/DEPLOYMENT.md lists them, docs/OPERATIONS.md has every command."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
serve.register(app)
demo.register(app)
admin.register(app)


def main(argv: list[str] | None = None) -> None:
    """Entry point: usage errors, like every other error, are one line on stderr."""
    command = typer.main.get_command(app)
    try:
        # Without standalone mode the parser returns an exit code instead of exiting.
        code = command.main(args=argv, prog_name="neuronetz-gateway", standalone_mode=False)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        print("error: aborted", file=sys.stderr)
        sys.exit(130)
    except typer.TyperException as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare command: show the help
            exc.show()  # type: ignore[attr-defined]
            sys.exit(2)
        # Typer's parser errors (missing or unknown option, bad choice) carry a
        # message and an exit code; print the message alone, on one line.
        format_message = getattr(exc, "format_message", None)
        message = format_message() if format_message else str(exc)
        print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
        sys.exit(getattr(exc, "exit_code", 2))
    sys.exit(code if isinstance(code, int) else 0)
