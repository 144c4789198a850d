"""``python -m callplane`` runs the CLI."""

from callplane_dev.cli import app

app()
