"""`python -m inodewatch` is the same as the `inodewatch` command."""

from inodewatch.cli import run

run()
