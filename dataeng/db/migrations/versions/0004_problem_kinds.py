"""problem kinds: one hyphenated spelling (missing_image -> missing-image, missing_mask -> missing-mask)

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 06:30:00
"""

from __future__ import annotations

from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

RENAMED = {"missing_image": "missing-image", "missing_mask": "missing-mask"}


def upgrade() -> None:
    for old, new in RENAMED.items():
        op.execute(f"UPDATE problems SET kind = '{new}' WHERE kind = '{old}'")


def downgrade() -> None:
    for old, new in RENAMED.items():
        op.execute(f"UPDATE problems SET kind = '{old}' WHERE kind = '{new}'")
