"""The registry's metadata, as MLflow's model registry keeps it: a description and key -> value tags on
each name and each version, and the kind of a job (`train`, or `evaluate` for an evaluation on demand).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("optimizers") as batch:
        batch.add_column(sa.Column("description", sa.Text(), nullable=True))
    with op.batch_alter_table("optimizer_versions") as batch:
        batch.add_column(sa.Column("description", sa.Text(), nullable=True))
    with op.batch_alter_table("jobs") as batch:
        # Every job before this revision meta-trained: the server default fills their rows in.
        batch.add_column(sa.Column("kind", sa.String(length=16), server_default="train", nullable=False))
    op.create_table(
        "optimizer_tags",
        sa.Column("optimizer_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("value", sa.String(length=256), nullable=False),
        sa.ForeignKeyConstraint(["optimizer_id"], ["optimizers.id"],
                                name=op.f("fk_optimizer_tags_optimizer_id_optimizers"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("optimizer_id", "key", name=op.f("pk_optimizer_tags")),
    )
    op.create_index(op.f("ix_optimizer_tags_value"), "optimizer_tags", ["value"])
    op.create_table(
        "version_tags",
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("value", sa.String(length=256), nullable=False),
        sa.ForeignKeyConstraint(["version_id"], ["optimizer_versions.id"],
                                name=op.f("fk_version_tags_version_id_optimizer_versions"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("version_id", "key", name=op.f("pk_version_tags")),
    )


def downgrade() -> None:
    op.drop_table("version_tags")
    op.drop_index(op.f("ix_optimizer_tags_value"), table_name="optimizer_tags")
    op.drop_table("optimizer_tags")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("kind")
    with op.batch_alter_table("optimizer_versions") as batch:
        batch.drop_column("description")
    with op.batch_alter_table("optimizers") as batch:
        batch.drop_column("description")
