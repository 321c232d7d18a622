"""``python -m dataeng`` (also what ``torchrun -m dataeng`` runs)."""

from dataeng.cli import app

app()
