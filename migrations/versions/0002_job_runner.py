"""The job runner's columns: the lease (who runs a job), where it resumed, and its progress.

Revision ID: 0002
Revises: 0001
Create Date: 2025-01-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

COLUMNS = {
    "lease_owner": sa.String(length=128),
    "resumed_from": sa.Integer(),
    "elapsed_s": sa.Float(),
    "eta_s": sa.Float(),
    "phase": sa.String(length=16),
    "device": sa.String(length=32),
}


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        for name, type_ in COLUMNS.items():
            batch.add_column(sa.Column(name, type_, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        for name in reversed(COLUMNS):
            batch.drop_column(name)
