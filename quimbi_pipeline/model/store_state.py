"""What a store's customers are scored against at a date, apart from their own orders (pure).

A profile row depends on the customer's own orders and on the store: the detectors' store priors and the categories
(FeatureStatistics), the segment models, how many customers each segment holds (outliers in a segment of their own),
the churn model and the outliers' LTV cap. build_store_profiles fits them on the store's customers and returns them as
a StoreState; given one, it scores any part of the store's customers against it, and the parts' rows are the rows of
one scoring of them all (test_store_state). That is what lets a store too large for one process be scored in parts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from quimbi_pipeline.model.churn import ChurnModel
from quimbi_pipeline.model.features import FeatureStatistics
from quimbi_pipeline.model.segmentation import AxisModel, AxisSegmentation


@dataclass(frozen=True)
class StoreState:
    statistics: FeatureStatistics
    models: dict[str, AxisModel]  # per axis, in the store's axis order
    segment_sizes: dict[str, np.ndarray]  # per axis, the fitted customers whose dominant segment each segment is
    churn: ChurnModel
    ltv_cap: float | None  # an outlier's predicted_ltv is capped here (outlier containment); None: no cap
    fresh_fit: bool  # the models were fitted at this date (the original engine), not models in force

    @property
    def customers(self) -> int:
        """The active customers the segment sizes count."""
        return int(next(iter(self.segment_sizes.values())).sum()) if self.segment_sizes else 0


def segment_sizes_of(segmentations: dict[str, AxisSegmentation]) -> dict[str, np.ndarray]:
    """Per axis, how many of the scored customers each segment dominates."""
    return {axis: np.bincount(s.dominant, minlength=s.model.k) for axis, s in segmentations.items()}
