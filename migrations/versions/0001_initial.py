"""The registry: API keys, optimizers, their versions and aliases, and the job table.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("scopes", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_api_keys_key_hash")),
    )
    op.create_table(
        "optimizers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("version_counter", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_optimizers")),
        sa.UniqueConstraint("name", name=op.f("uq_optimizers_name")),
    )
    # jobs and optimizer_versions point at each other; the jobs -> versions key is added once both exist.
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("key_id", sa.Integer(), nullable=True),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("iteration", sa.Integer(), nullable=False),
        sa.Column("total_iterations", sa.Integer(), nullable=False),
        sa.Column("meta_loss", sa.Float(), nullable=True),
        sa.Column("eval_loss", sa.Float(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("result_version_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("resume_checkpoint", sa.LargeBinary(), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(["key_id"], ["api_keys.id"], name=op.f("fk_jobs_key_id_api_keys"),
                                ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
    )
    op.create_index(op.f("ix_jobs_key_id"), "jobs", ["key_id"])
    op.create_index(op.f("ix_jobs_state"), "jobs", ["state"])
    op.create_table(
        "optimizer_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("optimizer_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("checkpoint", sa.LargeBinary(), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("job_id", sa.String(length=36), nullable=True),
        sa.Column("evaluation", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_optimizer_versions_job_id_jobs"),
                                ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["optimizer_id"], ["optimizers.id"],
                                name=op.f("fk_optimizer_versions_optimizer_id_optimizers"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_optimizer_versions")),
        sa.UniqueConstraint("optimizer_id", "version", name=op.f("uq_optimizer_versions_optimizer_id")),
    )
    op.create_index(op.f("ix_optimizer_versions_optimizer_id"), "optimizer_versions", ["optimizer_id"])
    op.create_index(op.f("ix_optimizer_versions_sha256"), "optimizer_versions", ["sha256"])
    op.create_table(
        "aliases",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("optimizer_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["optimizer_id"], ["optimizers.id"], name=op.f("fk_aliases_optimizer_id_optimizers"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["version_id"], ["optimizer_versions.id"],
                                name=op.f("fk_aliases_version_id_optimizer_versions"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_aliases")),
        sa.UniqueConstraint("optimizer_id", "name", name=op.f("uq_aliases_optimizer_id")),
    )
    op.create_index(op.f("ix_aliases_version_id"), "aliases", ["version_id"])
    with op.batch_alter_table("jobs") as batch:
        batch.create_foreign_key(op.f("fk_jobs_result_version_id_optimizer_versions"), "optimizer_versions",
                                 ["result_version_id"], ["id"], ondelete="SET NULL")


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_constraint(op.f("fk_jobs_result_version_id_optimizer_versions"), type_="foreignkey")
    op.drop_index(op.f("ix_aliases_version_id"), table_name="aliases")
    op.drop_table("aliases")
    op.drop_index(op.f("ix_optimizer_versions_sha256"), table_name="optimizer_versions")
    op.drop_index(op.f("ix_optimizer_versions_optimizer_id"), table_name="optimizer_versions")
    op.drop_table("optimizer_versions")
    op.drop_index(op.f("ix_jobs_state"), table_name="jobs")
    op.drop_index(op.f("ix_jobs_key_id"), table_name="jobs")
    op.drop_table("jobs")
    op.drop_table("optimizers")
    op.drop_table("api_keys")
