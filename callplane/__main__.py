"""``python -m callplane`` runs the CLI."""

from callplane.cli import app

app()
