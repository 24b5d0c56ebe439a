"""segment_models (the fitted segment model of each version and axis) and segment_transitions (MONIC, at
each refit of a stable model)."""

from __future__ import annotations

import pandas as pd
import sqlalchemy as sa

from quimbi_pipeline.storage.connection import Json, _model_records, metadata

segment_models = sa.Table(
    "segment_models", metadata,
    sa.Column("store_id", sa.Text, primary_key=True),
    sa.Column("model_version", sa.Text, primary_key=True),
    sa.Column("axis", sa.Text, primary_key=True),
    sa.Column("algorithm", sa.Text, nullable=False),
    sa.Column("k", sa.Integer, nullable=False),
    sa.Column("silhouette", sa.Float),
    sa.Column("segment_names", Json, nullable=False),
    sa.Column("centroids", Json, nullable=False),
    sa.Column("scaler", Json, nullable=False),
    sa.Column("n_customers", sa.Integer, nullable=False),
    sa.Column("note", sa.Text, nullable=False),
    sa.Column("fitted_on", sa.Date, nullable=False),
)

# MONIC transitions recorded at each refit of a stable segment model (ENABLE_STABLE_SEGMENTS).
segment_transitions = sa.Table(
    "segment_transitions", metadata,
    sa.Column("store_id", sa.Text, primary_key=True),
    sa.Column("model_version", sa.Text, primary_key=True),
    sa.Column("axis", sa.Text, primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True),
    sa.Column("previous_version", sa.Text),
    sa.Column("transition", sa.Text, nullable=False),
    sa.Column("old_segments", Json, nullable=False),
    sa.Column("new_segments", Json, nullable=False),
    sa.Column("overlap", sa.Float, nullable=False),
)


class ModelStore:
    def _replace_models(self, conn: sa.Connection, store_id: str, models: pd.DataFrame) -> None:
        """In the caller's transaction: the rows of the versions in `models` become `models`."""
        if len(models):
            conn.execute(sa.delete(segment_models).where(
                segment_models.c.store_id == store_id, segment_models.c.model_version.in_(models["model_version"].unique().tolist())))
            conn.execute(sa.insert(segment_models), _model_records(models))

    def _replace_transitions(self, conn: sa.Connection, store_id: str, transitions: pd.DataFrame | None) -> None:
        """In the caller's transaction: the transitions of the versions in `transitions` become `transitions`."""
        if transitions is not None and len(transitions):
            conn.execute(sa.delete(segment_transitions).where(
                segment_transitions.c.store_id == store_id, segment_transitions.c.model_version.in_(transitions["model_version"].unique().tolist())))
            conn.execute(sa.insert(segment_transitions), _model_records(transitions))

    # ---- segment models -------------------------------------------------------------------------
    def segment_model_records(self, store_id: str, model_version: str) -> list[dict]:
        """segment_models rows of one version, JSON columns parsed."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(segment_models).where(
                segment_models.c.store_id == store_id, segment_models.c.model_version == model_version)).mappings().all()
        return [dict(r) for r in rows]

    def previous_model_version(self, store_id: str, prefix: str, before_version: str) -> str | None:
        """The newest version `prefix...` older than `before_version` (versions end in a date: text order is date order)."""
        with self.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.max(segment_models.c.model_version)).where(
                segment_models.c.store_id == store_id, segment_models.c.model_version.like(prefix + "%"),
                segment_models.c.model_version < before_version)).scalar()

    def segment_transition_rows(self, store_id: str) -> pd.DataFrame:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(segment_transitions).where(segment_transitions.c.store_id == store_id)
                                .order_by(segment_transitions.c.model_version, segment_transitions.c.axis, segment_transitions.c.seq)).mappings().all()
        return pd.DataFrame([dict(r) for r in rows], columns=[c.name for c in segment_transitions.columns])
