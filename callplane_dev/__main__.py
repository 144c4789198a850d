"""``python -m callplane_dev`` runs the ``callplane`` CLI."""

from callplane_dev.cli import app

app()
