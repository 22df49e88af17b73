"""The ``gptscore`` command: a thin shell over the library. Each command parses its options and
calls the functions that analysis code calls too. User errors print one line and exit 1."""

from __future__ import annotations

import functools
import sys

import click

from gptscore_eval import records

# Errors that are the user's to fix (bad files, bad options): one line, no traceback.
USER_ERRORS = (records.RecordError, ValueError, FileNotFoundError, PermissionError, IsADirectoryError)


def user_errors(command):
    """Turn user errors raised by library code into a one-line message and exit status 1."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except USER_ERRORS as err:
            raise click.ClickException(str(err)) from None

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="gptscore-eval")
def main() -> None:
    """Make Bamba's SSD kernels faster, then prove with GPTScore that outputs did not get worse."""


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@user_errors
def validate(files: tuple[str, ...]) -> None:
    """Check prompt, output or score files line by line; print what they hold."""
    for path in files:
        f = records.read_records(path)
        click.echo(f"{path}: {len(f.records)} {f.kind.name} records, {len(f.meta)} run metadata lines")
        if f.kind is records.PROMPTS:
            buckets = f.counts("num_chunks")
            if any(b is not None for b in buckets):
                shown = ", ".join(f"{b}: {n}" for b, n in sorted(buckets.items(), key=lambda kv: (kv[0] is None, kv[0] or 0)))
                click.echo(f"  by num_chunks: {shown}")
        else:
            for strategy, n in sorted(f.counts("strategy").items()):
                click.echo(f"  {strategy}: {n}")
            if f.kind is records.SCORES:
                fields = [d for d in (*records.DIRECTIONS, *records.F_VARIANTS) if any(d in r for r in f.records)]
                click.echo(f"  scorers: {', '.join(sorted(f.counts('scorer')))}; aspects: "
                           f"{', '.join(sorted(f.counts('aspect')))}; fields: {', '.join(fields)}")


if __name__ == "__main__":
    sys.exit(main())
