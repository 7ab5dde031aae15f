"""Initial catalog: singers, songs, model versions, embeddings, ingest runs and errors.

Revision ID: 0001
Revises:
Create Date: 2025-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the column types of this revision (later model changes need new revisions).
JSON_TYPE = sa.JSON().with_variant(JSONB(), "postgresql")
TIMESTAMP = sa.DateTime(timezone=True)
KINDS = "('timbre', 'melody', 'fused')"


def upgrade() -> None:
    op.create_table(
        "singers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("metadata", JSON_TYPE, nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_singers")),
        sa.UniqueConstraint("name", name=op.f("uq_singers_name")),
    )
    op.create_table(
        "songs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("singer_id", sa.Integer(), nullable=True),
        sa.Column("external_id", sa.String(255), nullable=True),
        sa.Column("title", sa.Text(), nullable=True),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("duration_s", sa.Float(), nullable=False),
        sa.Column("sample_rate", sa.Integer(), nullable=False),
        sa.Column("channels", sa.Integer(), nullable=False),
        sa.Column("format", sa.String(32), nullable=False),
        sa.Column("n_voiced_chunks", sa.Integer(), nullable=False),
        sa.Column("metadata", JSON_TYPE, nullable=False),
        sa.Column("predicted", JSON_TYPE, nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_songs")),
        sa.ForeignKeyConstraint(
            ["singer_id"], ["singers.id"], name=op.f("fk_songs_singer_id_singers"), ondelete="SET NULL"
        ),
        sa.UniqueConstraint("content_hash", name=op.f("uq_songs_content_hash")),
        sqlite_autoincrement=True,  # never reuse a deleted song's id: it is a FAISS vector id
    )
    op.create_index("ix_songs_singer_id", "songs", ["singer_id"])
    op.create_index("ix_songs_status", "songs", ["status"])
    op.create_table(
        "model_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("version", sa.String(255), nullable=False),
        sa.Column("config", JSON_TYPE, nullable=False),
        sa.Column("fingerprint", sa.String(255), nullable=False),
        sa.Column("metrics", JSON_TYPE, nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_versions")),
        sa.UniqueConstraint("kind", "version", name=op.f("uq_model_versions_kind_version")),
        sa.CheckConstraint(f"kind IN {KINDS}", name=op.f("ck_model_versions_kind_valid")),
    )
    op.create_table(
        "embeddings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("song_id", sa.Integer(), nullable=False),
        sa.Column("model_version_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("dim", sa.Integer(), nullable=False),
        sa.Column("vector", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_embeddings")),
        sa.ForeignKeyConstraint(
            ["song_id"], ["songs.id"], name=op.f("fk_embeddings_song_id_songs"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["model_version_id"],
            ["model_versions.id"],
            name=op.f("fk_embeddings_model_version_id_model_versions"),
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint(
            "song_id", "model_version_id", "kind", name=op.f("uq_embeddings_song_id_model_version_id_kind")
        ),
        sa.CheckConstraint(f"kind IN {KINDS}", name=op.f("ck_embeddings_kind_valid")),
    )
    op.create_index("ix_embeddings_model_version_id_kind", "embeddings", ["model_version_id", "kind"])
    op.create_table(
        "ingest_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("started_at", TIMESTAMP, nullable=False),
        sa.Column("finished_at", TIMESTAMP, nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("counts", JSON_TYPE, nullable=False),
        sa.Column("options", JSON_TYPE, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ingest_runs")),
        sa.CheckConstraint(
            "status IN ('running', 'finished', 'failed')", name=op.f("ck_ingest_runs_status_valid")
        ),
    )
    op.create_table(
        "ingest_errors",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("cause", sa.String(64), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ingest_errors")),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["ingest_runs.id"],
            name=op.f("fk_ingest_errors_run_id_ingest_runs"),
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_ingest_errors_run_id", "ingest_errors", ["run_id"])
    op.create_index("ix_ingest_errors_cause", "ingest_errors", ["cause"])


def downgrade() -> None:
    for table in ("ingest_errors", "ingest_runs", "embeddings", "model_versions", "songs", "singers"):
        op.drop_table(table)
