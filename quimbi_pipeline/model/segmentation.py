"""The original segmentation engine, per store and axis (pure numpy/scikit-learn).

StandardScaler on the axis' features (log1p first for heavy-tailed ones), KMeans(random_state,
n_init) for each k in [min_k, max_k], k chosen by silhouette (on a fixed-seed sample above
`silhouette_sample_size` customers). Segments are relabelled worse -> better by the axis' feature
directions and named from the axis' ladder. Fuzzy memberships are fuzzy c-means memberships (m = 2)
to the centroids, which sum to 1, are scale-invariant and need no temperature.

Degenerate populations (documented in docs/segmentation.md): one distinct feature vector (one
customer, or identical features) gives one segment, "all_customers", membership 1 and no silhouette;
fewer distinct vectors than min_k gives k = number of distinct vectors; a population too small for a
silhouette (2 customers) keeps the smallest k with silhouette None.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from sklearn.mixture import GaussianMixture

from quimbi_pipeline.model.features import AXIS_BY_NAME, AxisSpec
from quimbi_pipeline.model.segment_bands import band_names, floor_scale
from quimbi_pipeline.settings import ClusteringAlgorithm, PipelineSettings

log = logging.getLogger(__name__)

SINGLE_SEGMENT_NAME = "all_customers"
MIN_SQUARED_DISTANCE = 1e-12
CENTROID_DECIMALS = 6
SCALER_DECIMALS = 9
# MONIC (Spiliopoulou et al. 2006): an old segment survives in (or is absorbed by) a new one holding
# more than MONIC_MATCH of its customers; it splits when parts of at least MONIC_SPLIT_PART each hold
# at least MONIC_MATCH together; otherwise it disappears. A new segment nobody went to has emerged.
MONIC_MATCH = 0.5
MONIC_SPLIT_PART = 0.25


def segment_names_for(axis: AxisSpec, k: int) -> list[str]:
    """k names from the axis ladder, spread from its worst to its best rung; suffixed when k exceeds it."""
    if k == 1:
        return [SINGLE_SEGMENT_NAME]
    rungs = len(axis.ladder)
    idx = np.floor(np.arange(k) * (rungs - 1) / (k - 1) + 0.5).astype(int)
    names = [axis.ladder[i] for i in idx]
    if len(set(names)) < k:
        counts: dict[str, int] = {}
        for i, name in enumerate(names):
            counts[name] = counts.get(name, 0) + 1
        seen: dict[str, int] = {}
        for i, name in enumerate(names):
            if counts[name] > 1:
                seen[name] = seen.get(name, 0) + 1
                names[i] = f"{name}_{seen[name]}"
    return names


@dataclass
class AxisModel:
    axis: str
    algorithm: str
    feature_names: list[str]
    log_scale: np.ndarray
    scaler_mean: np.ndarray
    scaler_scale: np.ndarray
    centroids: np.ndarray  # (k, n_features) in scaled space, ordered worse -> better
    segment_names: list[str]
    silhouette: float | None
    n_fit: int
    silhouette_by_k: dict[int, float] = field(default_factory=dict)
    note: str = ""
    weights: np.ndarray | None = None  # gmm: mixture weights and full covariances (scaled space)
    covariances: np.ndarray | None = None

    @property
    def k(self) -> int:
        return len(self.segment_names)

    def transform(self, raw: np.ndarray) -> np.ndarray:
        x = np.where(self.log_scale, np.log1p(np.maximum(raw, 0.0)), raw)
        return (x - self.scaler_mean) / self.scaler_scale

    def regions_along(self, raw: np.ndarray, feature: str, values: np.ndarray) -> list[tuple[str, float, float]]:
        """The segment bands of one feature at a customer's other features: where the model would place a customer
        with the features `raw` if only `feature` took each of the ascending `values`, as runs (segment, low, high),
        a boundary halfway between the two grid values it falls between. [] when `raw` has a missing value."""
        if not np.isfinite(raw).all() or feature not in self.feature_names or len(values) == 0:
            return []
        grid = np.repeat(np.asarray(raw, dtype=float)[None, :], len(values), axis=0)
        grid[:, self.feature_names.index(feature)] = values
        best = self.memberships(grid).argmax(axis=1)
        starts = np.flatnonzero(np.r_[True, best[1:] != best[:-1]])
        edges = np.r_[values[0], (values[starts[1:] - 1] + values[starts[1:]]) / 2, values[-1]]
        return [(self.segment_names[best[s]], float(edges[j]), float(edges[j + 1])) for j, s in enumerate(starts)]

    def memberships(self, raw: np.ndarray) -> np.ndarray:
        if self.covariances is not None:
            return gaussian_posteriors(self.transform(raw), self.centroids, self.covariances, self.weights)
        return fuzzy_memberships(self.transform(raw), self.centroids)

    def rounded(self) -> AxisModel:
        """The model as segment_models stores it (centroids to 6 decimals, scaler to 9): scoring with
        the rounded model gives the same memberships whether it was just fitted or read back."""
        mixture = {} if self.covariances is None else {"weights": np.round(self.weights, SCALER_DECIMALS),
                                                       "covariances": np.round(self.covariances, SCALER_DECIMALS)}
        scale = np.round(self.scaler_scale, SCALER_DECIMALS)
        scale = np.where(scale > 0, scale, 1.0)  # a spread of float noise (identical customers) rounds to 0: scale 1 instead
        return replace(self, centroids=np.round(self.centroids, CENTROID_DECIMALS), scaler_mean=np.round(self.scaler_mean, SCALER_DECIMALS),
                       scaler_scale=scale, **mixture)

    def to_record(self) -> dict:
        """The axis' segment_models columns (without store, version and dates)."""
        return {
            "axis": self.axis,
            "algorithm": self.algorithm,
            "k": self.k,
            "silhouette": None if self.silhouette is None else round(self.silhouette, CENTROID_DECIMALS),
            "segment_names": list(self.segment_names),
            "centroids": np.round(self.centroids, CENTROID_DECIMALS).tolist(),
            # The scaler; for gmm also the mixture (weights, covariances), needed to score later dates.
            "scaler": {"features": list(self.feature_names), "log1p": self.log_scale.tolist(),
                       "mean": np.round(self.scaler_mean, SCALER_DECIMALS).tolist(), "scale": np.round(self.scaler_scale, SCALER_DECIMALS).tolist(),
                       **({} if self.covariances is None else {"gmm_weights": np.round(self.weights, SCALER_DECIMALS).tolist(),
                                                               "gmm_covariances": np.round(self.covariances, SCALER_DECIMALS).tolist()})},
            "n_customers": self.n_fit,
            "note": self.note,
        }

    @classmethod
    def from_record(cls, record: dict) -> AxisModel:
        """A model read back from a segment_models row (JSON columns already parsed)."""
        scaler = record["scaler"]
        silhouette = record.get("silhouette")
        return cls(
            axis=record["axis"], algorithm=record["algorithm"], feature_names=list(scaler["features"]),
            log_scale=np.asarray(scaler["log1p"], dtype=bool), scaler_mean=np.asarray(scaler["mean"], dtype="float64"),
            scaler_scale=np.asarray(scaler["scale"], dtype="float64"),
            centroids=np.asarray(record["centroids"], dtype="float64").reshape(int(record["k"]), -1),
            segment_names=list(record["segment_names"]), silhouette=None if silhouette is None or pd.isna(silhouette) else float(silhouette),
            n_fit=int(record["n_customers"]), note=record.get("note") or "",
            weights=np.asarray(scaler["gmm_weights"], dtype="float64") if "gmm_weights" in scaler else None,
            covariances=np.asarray(scaler["gmm_covariances"], dtype="float64") if "gmm_covariances" in scaler else None,
        )


def fuzzy_memberships(scaled: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Fuzzy c-means memberships with m = 2: u_ij = (1/d_ij^2) / sum_k (1/d_ik^2); rows sum to 1."""
    d2 = np.zeros((scaled.shape[0], centroids.shape[0]))
    for j in range(centroids.shape[0]):  # loop over k (<= a few dozen), not customers
        diff = scaled - centroids[j]
        d2[:, j] = np.einsum("ij,ij->i", diff, diff)
    inv = 1.0 / np.maximum(d2, MIN_SQUARED_DISTANCE)
    return inv / inv.sum(axis=1, keepdims=True)


def gaussian_posteriors(scaled: np.ndarray, means: np.ndarray, covariances: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """GMM memberships: P(component j | x) with full covariances (what GaussianMixture.predict_proba gives)."""
    d = scaled.shape[1]
    log_p = np.empty((scaled.shape[0], means.shape[0]))
    for j in range(means.shape[0]):  # loop over components, not customers
        chol = np.linalg.cholesky(covariances[j])
        z = np.linalg.solve(chol, (scaled - means[j]).T)
        log_p[:, j] = np.log(weights[j]) - 0.5 * np.einsum("ij,ij->j", z, z) - np.log(np.diag(chol)).sum() - 0.5 * d * np.log(2 * np.pi)
    log_p -= log_p.max(axis=1, keepdims=True)
    p = np.exp(log_p)
    return p / p.sum(axis=1, keepdims=True)


SILHOUETTE_CHUNK_ROWS = 1024


def silhouette_scores(x: np.ndarray, labelings: dict[int, np.ndarray], sample_size: int | None, random_state: int) -> dict[int, float]:
    """Silhouette coefficient of several labelings of the same points, as sklearn's silhouette_score.

    Same sample as sklearn (RandomState(random_state).permutation(n)[:sample_size]) and the same
    definition, but the sample's pairwise distances are computed once, in chunks, for all labelings:
    per chunk, distance sums to every cluster of every labeling are one matrix product.
    Labelings with fewer than 2 or more than n - 1 distinct labels in the sample are left out.
    """
    n = x.shape[0]
    if sample_size is not None and n > sample_size:
        idx = np.random.RandomState(random_state).permutation(n)[:sample_size]
        x = x[idx]
        labelings = {k: labels[idx] for k, labels in labelings.items()}
    m = x.shape[0]
    blocks = []  # (k, codes, counts, column offset)
    offset = 0
    for k, labels in labelings.items():
        uniques, codes = np.unique(labels, return_inverse=True)
        if 2 <= uniques.size <= m - 1:
            blocks.append((k, codes, np.bincount(codes).astype("float64"), offset))
            offset += uniques.size
    if not blocks:
        return {}
    onehot = np.zeros((m, offset))
    for _, codes, _, start in blocks:
        onehot[np.arange(m), start + codes] = 1.0
    sq = np.einsum("ij,ij->i", x, x)
    sums = np.empty((m, offset))
    for start in range(0, m, SILHOUETTE_CHUNK_ROWS):
        stop = min(start + SILHOUETTE_CHUNK_ROWS, m)
        # sq_i + sq_j - 2 x_i.x_j, in place (the same operations in the same order: the same bits, 30% less time)
        dist = sq[start:stop, None] + sq[None, :]
        dot = x[start:stop] @ x.T
        dot *= 2.0
        dist -= dot
        np.maximum(dist, 0.0, out=dist)
        np.sqrt(dist, out=dist)
        dist[np.arange(stop - start), np.arange(start, stop)] = 0.0
        sums[start:stop] = dist @ onehot
    scores = {}
    rows = np.arange(m)
    for k, codes, counts, start in blocks:
        cluster_sums = sums[:, start:start + counts.size]
        own = counts[codes]
        with np.errstate(divide="ignore", invalid="ignore"):
            a = cluster_sums[rows, codes] / (own - 1)
            mean_to = cluster_sums / counts
        mean_to[rows, codes] = np.inf
        b = mean_to.min(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            sil = (b - a) / np.maximum(a, b)
        sil = np.where(own > 1, np.nan_to_num(sil), 0.0)
        scores[k] = float(sil.mean())
    return scores


def axis_matrix(features: pd.DataFrame, axis: AxisSpec) -> np.ndarray:
    """The raw feature matrix of an axis; missing values take the column median (logged)."""
    frame = features[axis.feature_names].astype("float64")
    if frame.isna().to_numpy().any():
        log.warning("axis %s: %d missing feature value(s) filled with the column median", axis.name, int(frame.isna().sum().sum()))
        frame = frame.fillna(frame.median()).fillna(0.0)
    return frame.to_numpy()


def _order_by_quality(centroids: np.ndarray, axis: AxisSpec) -> np.ndarray:
    direction = np.array([1.0 if f.higher_is_better else -1.0 for f in axis.features])
    return np.argsort(centroids @ direction, kind="stable")


def fit_axis_model(raw: np.ndarray, axis: AxisSpec, settings: PipelineSettings) -> AxisModel:
    log_scale = np.array([f.log_scale for f in axis.features])
    x = np.where(log_scale, np.log1p(np.maximum(raw, 0.0)), raw)
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    scale = np.where(std > 0, std, 1.0)  # as StandardScaler: a constant feature keeps scale 1
    if settings.enable_honest_segments:  # a spread that means nothing cannot dominate the axis
        scale = floor_scale(axis.feature_names, std)
    scaled = (x - mean) / scale
    n = scaled.shape[0]
    n_distinct = int(pd.DataFrame(scaled).drop_duplicates().shape[0]) if n else 0

    common = dict(axis=axis.name, algorithm="kmeans", feature_names=axis.feature_names, log_scale=log_scale,
                  scaler_mean=mean, scaler_scale=scale, n_fit=n)
    if n_distinct <= 1:
        centroid = scaled[:1] if n else np.zeros((1, len(axis.features)))
        note = "one customer" if n == 1 else "all customers have identical features"
        log.info("axis %s: %s -> one segment", axis.name, note)
        return AxisModel(centroids=centroid.copy(), segment_names=[SINGLE_SEGMENT_NAME], silhouette=None, note=note, **common)

    k_min, k_max = k_bounds(n, n_distinct, settings)
    algorithm = ClusteringAlgorithm(settings.clustering_algorithm)
    if algorithm == ClusteringAlgorithm.kmeans:
        model = _fit_kmeans(scaled, axis, settings, k_min, k_max, common)
    elif algorithm == ClusteringAlgorithm.gmm:
        model = _fit_gmm(scaled, axis, settings, k_min, k_max, common)
    else:
        model = _fit_density(scaled, axis, settings, algorithm, common)
    if settings.enable_honest_segments:
        model = replace(model, segment_names=honest_names(model, axis, np.median(raw, axis=0)))
    return model


def honest_names(model: AxisModel, axis: AxisSpec, raw_median: np.ndarray) -> list[str]:
    """Names from the bands of segment_bands.py: each centroid back in raw units, money against the store's median."""
    x = model.centroids * model.scaler_scale + model.scaler_mean
    raw = np.where(model.log_scale, np.expm1(x), x)
    values = {f: raw[:, j] for j, f in enumerate(model.feature_names)}
    return band_names(axis.name, axis.ladder, values, dict(zip(model.feature_names, raw_median)))


def k_bounds(n: int, n_distinct: int, settings: PipelineSettings) -> tuple[int, int]:
    """[min_k, max_k] for n customers; DYNAMIC_K_RANGE: max_k = max(min(floor(sqrt(n) / 2), 20, n - 1), min_k + 1)."""
    max_k = settings.max_k
    if settings.dynamic_k_range:
        max_k = max(min(int(np.floor(np.sqrt(n) / 2)), 20, n - 1), settings.min_k + 1)
    k_max = min(max_k, n_distinct)
    return min(settings.min_k, k_max), k_max


def _best_k(scaled, labelings, settings, k_min, n) -> tuple[int, dict[int, float], str]:
    sample = settings.silhouette_sample_size if n > settings.silhouette_sample_size else None
    scores = silhouette_scores(scaled, labelings, sample, settings.random_state)
    if scores:
        return max(scores, key=lambda k: (scores[k], -k)), scores, ""  # ties: the smaller k
    return k_min, scores, f"{n} customers: too few for a silhouette"


def _named_model(axis, centroids, scores, best_k, note, common, **extra) -> AxisModel:
    order = _order_by_quality(centroids, axis)
    if "weights" in extra:
        extra = {"weights": extra["weights"][order], "covariances": extra["covariances"][order]}
    return AxisModel(centroids=centroids[order], segment_names=segment_names_for(axis, centroids.shape[0]), silhouette=scores.get(best_k),
                     silhouette_by_k=scores, note=note, **common, **extra)


def _fit_kmeans(scaled, axis, settings, k_min, k_max, common) -> AxisModel:
    """The original engine: KMeans for every k, the k of the best silhouette."""
    fits: dict[int, KMeans] = {}
    labelings: dict[int, np.ndarray] = {}
    for k in range(k_min, k_max + 1):
        km = KMeans(n_clusters=k, random_state=settings.random_state, n_init=settings.kmeans_n_init)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=UserWarning)  # duplicate points: handled by n_distinct
            labelings[k] = km.fit_predict(scaled)
        fits[k] = km
    best_k, scores, note = _best_k(scaled, labelings, settings, k_min, scaled.shape[0])
    return _named_model(axis, fits[best_k].cluster_centers_, scores, best_k, note, common)


def fit_sample_rows(n: int, settings: PipelineSettings) -> np.ndarray | None:
    """The fixed-seed sample of row positions a fit runs on above cluster_fit_sample_size rows (None: every row), in
    the permutation's order."""
    if n <= settings.cluster_fit_sample_size:
        return None
    return np.random.RandomState(settings.random_state).permutation(n)[: settings.cluster_fit_sample_size]


def _fit_sample(scaled: np.ndarray, settings: PipelineSettings) -> np.ndarray:
    rows = fit_sample_rows(scaled.shape[0], settings)
    return scaled if rows is None else scaled[rows]


def _fit_gmm(scaled, axis, settings, k_min, k_max, common) -> AxisModel:
    """GaussianMixture (full covariances) for every k on a fixed-seed sample; memberships = posteriors."""
    sample = _fit_sample(scaled, settings)
    fits: dict[int, GaussianMixture] = {}
    labelings: dict[int, np.ndarray] = {}
    for k in range(k_min, min(k_max, sample.shape[0]) + 1):
        gm = GaussianMixture(n_components=k, covariance_type="full", random_state=settings.random_state, reg_covar=1e-4)
        gm.fit(sample)
        fits[k] = gm
        labelings[k] = gm.predict(scaled)
    best_k, scores, note = _best_k(scaled, labelings, settings, k_min, scaled.shape[0])
    gm = fits[best_k]
    return _named_model(axis, gm.means_, scores, best_k, note, {**common, "algorithm": "gmm"}, weights=gm.weights_, covariances=gm.covariances_)


def _fit_density(scaled, axis, settings, algorithm, common) -> AxisModel:
    """HDBSCAN (the hdbscan package) or DBSCAN on a fixed-seed sample: k = the clusters found, centroids =
    their means, memberships = fuzzy c-means to them. Noise points of the sample are counted in the note;
    fewer than 2 clusters falls back to the original kmeans, with a note."""
    import hdbscan
    from sklearn.cluster import DBSCAN

    sample = _fit_sample(scaled, settings)
    if algorithm == ClusteringAlgorithm.hdbscan:
        labels = hdbscan.HDBSCAN(min_cluster_size=settings.hdbscan_min_cluster_size).fit_predict(sample)
    else:
        labels = DBSCAN(eps=settings.dbscan_eps, min_samples=settings.dbscan_min_samples).fit_predict(sample)
    clusters = np.unique(labels[labels >= 0])
    noise = float((labels < 0).mean())
    if clusters.size < 2:
        log.warning("axis %s: %s found %d cluster(s): the original kmeans is used", axis.name, algorithm.value, clusters.size)
        k_min, k_max = k_bounds(scaled.shape[0], scaled.shape[0], settings)
        model = _fit_kmeans(scaled, axis, settings, min(k_min, k_max), k_max, common)
        return replace(model, note=f"{algorithm.value} found {clusters.size} cluster(s) (noise {noise:.1%}): kmeans used")
    centroids = np.stack([sample[labels == c].mean(axis=0) for c in clusters])  # a few clusters, not customers
    dominant = fuzzy_memberships(scaled, centroids).argmax(axis=1)
    _, scores, _ = _best_k(scaled, {clusters.size: dominant}, settings, clusters.size, scaled.shape[0])
    return _named_model(axis, centroids, scores, clusters.size, f"{algorithm.value}: noise {noise:.1%} of the fit sample",
                        {**common, "algorithm": algorithm.value})


@dataclass
class AxisSegmentation:
    model: AxisModel
    memberships: np.ndarray  # (n_customers, k), rows sum to 1
    dominant: np.ndarray  # (n_customers,) index into model.segment_names


def segment_axis(features: pd.DataFrame, axis: AxisSpec, settings: PipelineSettings) -> AxisSegmentation:
    raw = axis_matrix(features, axis)
    model = fit_axis_model(raw, axis, settings)
    memberships = model.memberships(raw)
    return AxisSegmentation(model, memberships, memberships.argmax(axis=1))


def score_axis(features: pd.DataFrame, axis: AxisSpec, model: AxisModel) -> AxisSegmentation:
    """Memberships of today's customers in a model fitted earlier (stable segment identity)."""
    if model.feature_names != axis.feature_names:
        raise ValueError(f"axis {axis.name}: stored model has features {model.feature_names}, expected {axis.feature_names}")
    memberships = model.memberships(axis_matrix(features, axis))
    return AxisSegmentation(model, memberships, memberships.argmax(axis=1))


@dataclass(frozen=True)
class SegmentTransition:
    """One MONIC transition between an old model's segments and a new model's."""

    transition: str  # survival | absorption | split | disappearance | emergence
    old_segments: tuple[str, ...]
    new_segments: tuple[str, ...]
    overlap: float  # survival/absorption/split: share of the old segment(s)' customers that went there


def match_segments(previous: AxisModel, fitted: AxisModel, raw: np.ndarray) -> tuple[AxisModel, list[SegmentTransition]]:
    """Name a refitted model's segments after the previous model's, and report MONIC transitions.

    Names: Hungarian matching (scipy linear_sum_assignment) of centroids, both expressed in the new
    model's scaled space; a new segment left unmatched (k grew) takes the ladder name of its rank,
    suffixed if that name is held. Transitions: from the overlap of today's customers' dominant
    segments under the previous and the new model (`raw` = today's axis features).
    """
    axis = AXIS_BY_NAME[fitted.axis]
    names = list(segment_names_for(axis, fitted.k))
    if previous.k > 1 and fitted.k > 1:
        old_in_new = (previous.centroids * previous.scaler_scale + previous.scaler_mean - fitted.scaler_mean) / fitted.scaler_scale
        cost = np.sqrt(((fitted.centroids[:, None, :] - old_in_new[None, :, :]) ** 2).sum(axis=2))
        rows, cols = linear_sum_assignment(cost)
        matched = {int(r): previous.segment_names[c] for r, c in zip(rows, cols)}
        taken = set(matched.values())
        for j in range(fitted.k):
            if j in matched:
                names[j] = matched[j]
                continue
            name, n = names[j], 1
            while name in taken:
                n += 1
                name = f"{names[j]}_{n}"
            names[j] = name
            taken.add(name)
    renamed = replace(fitted, segment_names=names)
    return renamed, monic_transitions(previous, renamed, raw)


def monic_transitions(previous: AxisModel, fitted: AxisModel, raw: np.ndarray) -> list[SegmentTransition]:
    old_labels = previous.memberships(raw).argmax(axis=1)
    new_labels = fitted.memberships(raw).argmax(axis=1)
    counts = np.zeros((previous.k, fitted.k))
    np.add.at(counts, (old_labels, new_labels), 1.0)
    size = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, size, out=np.zeros_like(counts), where=size > 0)
    old_names, new_names = previous.segment_names, fitted.segment_names
    transitions: list[SegmentTransition] = []
    target: dict[int, list[int]] = {}
    reached: set[int] = set()
    for i in range(previous.k):
        j = int(share[i].argmax())
        if share[i, j] > MONIC_MATCH:
            target.setdefault(j, []).append(i)
            continue
        parts = np.flatnonzero(share[i] >= MONIC_SPLIT_PART)
        if parts.size >= 2 and share[i, parts].sum() >= MONIC_MATCH:
            transitions.append(SegmentTransition("split", (old_names[i],), tuple(new_names[p] for p in parts), round(float(share[i, parts].sum()), 6)))
            reached.update(int(p) for p in parts)
        else:
            transitions.append(SegmentTransition("disappearance", (old_names[i],), (), round(float(share[i].max(initial=0.0)), 6)))
    for j, olds in sorted(target.items()):
        kind = "survival" if len(olds) == 1 else "absorption"
        overlap = counts[olds, j].sum() / max(size[olds].sum(), 1.0)
        transitions.append(SegmentTransition(kind, tuple(old_names[i] for i in olds), (new_names[j],), round(float(overlap), 6)))
        reached.add(j)
    for j in range(fitted.k):
        if j not in reached:
            col = counts[:, j].sum()
            transitions.append(SegmentTransition("emergence", (), (new_names[j],), round(float(counts[:, j].max() / col) if col else 0.0, 6)))
    return transitions
