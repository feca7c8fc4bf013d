"""Rule ``filter_noise``: Diff-CXR's Latent Noise Filtering Strategy (LNFS), coarse to fine in the autoencoder's
latent space. The Diff-CXR paper (arXiv 2410.20165) describes three steps — k-means finds typical normal data,
a model of the normal manifold scores reconstruction error, a discriminator trained with explicit supervision from
the confident normal/noisy sets gives the final decision — but publishes neither code nor settings for it (its public
repository has no LNFS), so the concrete choices below are this project's.

Features: the cached posterior means (rule ``cache_latents``), flattened and standardised per dimension; a whitened
PCA of them (``features.pca_dims``) is the compact space of steps 1 and 3. Statistics are fitted on ``fit_splits``
(default train) and applied to every image.

1. **Coarse — k-means** (``kmeans.clusters``) in the PCA space. Clusters holding less than
   ``kmeans.min_cluster_fraction`` of the fitted images are *outlier clusters*. *Typical normal* images are members of
   the other clusters within the ``kmeans.typical_quantile`` of their cluster's distances to the centre.
2. **Manifold — PCA of the typical normal set** in the full standardised latent space (``manifold.components``: a
   count, or a share of explained variance), read as a Gaussian on a linear subspace. Normal data are multi-modal
   (views, sources), so every image is first centred on the typical mean of its nearest *regular* cluster and one
   PCA models the pooled within-mode variation (an outlier cluster is never a mode: its members keep their offset). Two statistics: the
   reconstruction error off the subspace (Q) and the Mahalanobis spread along it (Hotelling T²); blank or shuttered
   frames sit *inside* the subspace (small Q) but far out along it, foreign structure leaves it (large Q). Score: the
   larger of the two robust z-scores of their logarithms (median and MAD over the fitted images). *Confident noisy*: z > ``manifold.noisy_z``, or an outlier-cluster member with
   z > ``manifold.normal_z``. *Confident normal*: typical normal with z <= ``manifold.normal_z``.
3. **Fine — discriminator** (logistic regression or a small MLP) trained on the confident sets (fitted images only),
   inputs: PCA features plus the log reconstruction error; its probability of "noisy" scores every image.

Decision (a cascade; data are never deleted): confident noisy -> removed (``decided_by`` = ``manifold``, or ``kmeans``
for an outlier-cluster member), confident normal -> kept (``kmeans``), every other image by the discriminator
(removed when its score > ``discriminator.threshold``; ``discriminator``). With fewer than
``discriminator.min_noisy`` confident noisy images no discriminator is trained and the rest are kept (``manifold``).

Outputs: ``filtered_index.parquet`` (one row per cached image: scores, confident set, removed/kept, decided_by),
a markdown fragment and a figure; with demo ground truth (``results/sources/_meta/<source>.noise.parquet`` joined to
image ids through the ingestion manifests) precision and recall are measured. Readers: :func:`cxrgen.data.lnfs.kept_image_ids`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

DECIDERS = ("kmeans", "manifold", "discriminator")
INDEX_COLUMNS = ("image_id", "split", "source", "view", "cluster", "cluster_size", "kmeans_distance",
                 "kmeans_typical", "kmeans_outlier_cluster", "manifold_error", "manifold_spread", "manifold_z",
                 "discriminator_score",
                 "confident", "removed", "kept", "decided_by")
_CHUNK = 8192


# ---- the filter on a plain feature matrix (unit-testable without a latent cache) ----------------------------------
def _robust_z(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    med = float(np.median(reference))
    mad = float(np.median(np.abs(reference - med))) * 1.4826
    return (values - med) / max(mad, 1e-12 * max(abs(med), 1.0))


def _chunked(fn, x: np.ndarray) -> np.ndarray:
    return np.concatenate([fn(np.asarray(x[i:i + _CHUNK], dtype=np.float64)) for i in range(0, len(x), _CHUNK)])


def lnfs_scores(features: np.ndarray, fit_mask: np.ndarray, cfg: dict, seed: int) -> pd.DataFrame:
    """Run the three LNFS steps on ``features`` [N, D] (rows with ``fit_mask`` fit the models; all rows are scored).
    Returns one row per input row with the columns of :data:`INDEX_COLUMNS` except the id/split/source/view ones."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    n, dim = features.shape
    fit_idx = np.flatnonzero(fit_mask)
    if len(fit_idx) < 4:
        raise ValueError(f"LNFS needs at least 4 images in the fit splits, got {len(fit_idx)}")
    rng = np.random.default_rng(seed)
    max_fit = int(cfg.get("fit_max_images") or len(fit_idx))
    if len(fit_idx) > max_fit:
        fit_idx = np.sort(rng.choice(fit_idx, size=max_fit, replace=False))
    fit_x = np.asarray(features[fit_idx], dtype=np.float64)
    mean, std = fit_x.mean(axis=0), fit_x.std(axis=0)
    std[std < 1e-8] = 1.0

    def standardise(x):
        return (x - mean) / std

    # compact whitened space (steps 1 and 3)
    pca_dims = int(min(cfg["features"]["pca_dims"], len(fit_idx) - 1, dim))
    reducer = PCA(n_components=pca_dims, whiten=True, svd_solver="full", random_state=seed).fit(standardise(fit_x))
    z = _chunked(lambda x: reducer.transform(standardise(x)), features)
    z_fit = z[fit_idx]

    # 1. coarse: k-means, outlier clusters, typical normal images
    km_cfg = cfg["kmeans"]
    k = int(min(km_cfg["clusters"], len(fit_idx)))
    kmeans = KMeans(n_clusters=k, n_init=int(km_cfg["n_init"]), random_state=seed).fit(z_fit)
    cluster = kmeans.predict(z)
    distance = np.linalg.norm(z - kmeans.cluster_centers_[cluster], axis=1)
    fit_cluster = cluster[fit_idx]
    sizes = np.bincount(fit_cluster, minlength=k)
    small = sizes < float(km_cfg["min_cluster_fraction"]) * len(fit_idx)
    limits = np.array([np.quantile(distance[fit_idx][fit_cluster == c], km_cfg["typical_quantile"])
                       if sizes[c] else -np.inf for c in range(k)])
    outlier_cluster = small[cluster]
    typical = ~outlier_cluster & (distance <= limits[cluster])
    typical_fit = fit_idx[typical[fit_idx]]
    if len(typical_fit) < 3:
        raise ValueError("LNFS: fewer than 3 typical normal images after k-means; lower kmeans.clusters or raise "
                         "kmeans.typical_quantile")

    # 2. manifold of the typical normal set. Normal data are multi-modal (views, sources): each image is first centred
    # on its nearest *regular* cluster's typical mean, then one PCA models the pooled within-mode variation.
    regular = np.flatnonzero(~small)
    home = regular[np.argmin(((z[:, None, :] - kmeans.cluster_centers_[regular][None]) ** 2).sum(-1), axis=1)]
    typical_x = standardise(np.asarray(features[typical_fit], dtype=np.float64))
    centres = np.zeros((k, dim))
    for c in regular:
        members = cluster[typical_fit] == c
        if members.any():
            centres[c] = typical_x[members].mean(axis=0)
    typical_x = typical_x - centres[home[typical_fit]]
    components = cfg["manifold"]["components"]
    if isinstance(components, float) and components < 1:
        manifold = PCA(n_components=components, svd_solver="full", random_state=seed).fit(typical_x)
    else:
        manifold = PCA(n_components=int(min(components, len(typical_fit) - 1, dim)), svd_solver="full",
                       random_state=seed).fit(typical_x)
    variances = np.maximum(manifold.explained_variance_, 1e-12)

    def manifold_statistics(rows):
        xs = standardise(np.asarray(features[rows], dtype=np.float64)) - centres[home[rows]]
        proj = manifold.transform(xs)
        residual = ((xs - manifold.inverse_transform(proj)) ** 2).mean(axis=1)  # off the manifold (Q / SPE)
        spread = ((proj**2) / variances).sum(axis=1) / proj.shape[1]  # along it (Hotelling T², per component)
        return np.column_stack([residual, spread])

    stats = np.concatenate([manifold_statistics(np.arange(i, min(i + _CHUNK, n))) for i in range(0, n, _CHUNK)])
    error, spread = stats[:, 0], stats[:, 1]
    log_error, log_spread = np.log(np.maximum(error, 1e-12)), np.log(np.maximum(spread, 1e-12))
    mz = np.maximum(_robust_z(log_error, log_error[fit_idx]), _robust_z(log_spread, log_spread[fit_idx]))
    noisy_z, normal_z = float(cfg["manifold"]["noisy_z"]), float(cfg["manifold"]["normal_z"])
    by_manifold = mz > noisy_z
    by_kmeans = outlier_cluster & (mz > normal_z) & ~by_manifold
    confident_noisy = by_manifold | by_kmeans
    confident_normal = typical & (mz <= normal_z)

    # 3. fine: discriminator on the confident sets (fitted rows only), scores for every image
    d_cfg = cfg["discriminator"]
    fit_mask_sel = np.zeros(n, dtype=bool)
    fit_mask_sel[fit_idx] = True
    train_noisy = np.flatnonzero(confident_noisy & fit_mask_sel)
    train_normal = np.flatnonzero(confident_normal & fit_mask_sel)
    inputs = np.column_stack([z, log_error, log_spread])
    score = np.full(n, np.nan)
    trained = len(train_noisy) >= int(d_cfg["min_noisy"]) and len(train_normal) >= int(d_cfg["min_noisy"])
    if trained:
        x_train = inputs[np.concatenate([train_normal, train_noisy])]
        y_train = np.concatenate([np.zeros(len(train_normal)), np.ones(len(train_noisy))])
        centre, scale = x_train.mean(axis=0), x_train.std(axis=0) + 1e-8
        model = _discriminator(d_cfg, seed).fit((x_train - centre) / scale, y_train)
        score = model.predict_proba((inputs - centre) / scale)[:, 1]
    else:
        log.info("LNFS: %d confident noisy images (< discriminator.min_noisy=%s): no discriminator trained",
                 len(train_noisy), d_cfg["min_noisy"])

    undecided = ~confident_noisy & ~confident_normal
    removed = confident_noisy | (undecided & (score > float(d_cfg["threshold"]))) if trained else confident_noisy
    decided_by = np.where(by_kmeans, "kmeans", np.where(
        by_manifold, "manifold", np.where(confident_normal, "kmeans",
                                          "discriminator" if trained else "manifold")))
    confident = np.where(confident_noisy, "noisy", np.where(confident_normal, "normal", ""))
    return pd.DataFrame({
        "cluster": cluster.astype(np.int32), "cluster_size": sizes[cluster].astype(np.int64),
        "kmeans_distance": distance, "kmeans_typical": typical, "kmeans_outlier_cluster": outlier_cluster,
        "manifold_error": error, "manifold_spread": spread, "manifold_z": mz, "discriminator_score": score,
        "confident": confident,
        "removed": removed, "kept": ~removed, "decided_by": decided_by,
    })


def _discriminator(d_cfg: dict, seed: int):
    if d_cfg["kind"] == "logistic":
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(C=float(d_cfg["C"]), class_weight="balanced", max_iter=2000)
    if d_cfg["kind"] == "mlp":
        from sklearn.neural_network import MLPClassifier

        return MLPClassifier(hidden_layer_sizes=(int(d_cfg["hidden"]),), alpha=1.0 / float(d_cfg["C"]),
                             max_iter=2000, random_state=seed)
    raise ValueError(f"lnfs.discriminator.kind={d_cfg['kind']!r}; allowed: logistic, mlp")


# ---- ground truth of the demo corpus -----------------------------------------------------------------------------
def noise_truth(truth_paths: list[Path | str], manifest_paths: list[Path | str]) -> pd.DataFrame:
    """Image ids of the injected noisy films: each truth file (source, rel_path, kind) joined to the ingestion
    manifest of its source on rel_path. Columns image_id, source, kind."""
    truth = [pd.read_parquet(p) for p in truth_paths]
    truth = pd.concat(truth, ignore_index=True) if truth else pd.DataFrame(columns=["source", "rel_path", "kind"])
    manifests = [pd.read_parquet(p, columns=["source", "rel_path", "image_id"]) for p in manifest_paths]
    if not manifests or truth.empty:
        return pd.DataFrame(columns=["image_id", "source", "kind"])
    joined = truth.merge(pd.concat(manifests, ignore_index=True), on=["source", "rel_path"], how="inner")
    return joined[["image_id", "source", "kind"]].reset_index(drop=True)


def _auroc(y: np.ndarray, score: np.ndarray) -> float:
    from cxrgen.evaluate.metrics import auroc

    ok = np.isfinite(score)
    value = auroc(y[ok], score[ok])  # None without both classes among the scored images
    return float("nan") if value is None else value


def evaluate(filtered: pd.DataFrame, truth: pd.DataFrame) -> dict:
    """Precision/recall/F1 of ``removed`` against the injected noise, per-kind recall, per-stage share and the AUROC
    of each stage's score, over the images of the filtered index."""
    noisy = filtered["image_id"].isin(truth["image_id"]).to_numpy()
    removed = filtered["removed"].to_numpy(bool)
    tp = int((noisy & removed).sum())
    out = {
        "images": int(len(filtered)), "noisy": int(noisy.sum()), "removed": int(removed.sum()), "true_positives": tp,
        "precision": tp / removed.sum() if removed.any() else float("nan"),
        "recall": tp / noisy.sum() if noisy.any() else float("nan"),
        "false_positive_rate": float((removed & ~noisy).sum() / max((~noisy).sum(), 1)),
        "auroc": {"kmeans_distance": _auroc(noisy, filtered["kmeans_distance"].to_numpy(float)),
                  "manifold_error": _auroc(noisy, filtered["manifold_error"].to_numpy(float)),
                  "manifold_z": _auroc(noisy, filtered["manifold_z"].to_numpy(float)),
                  "discriminator_score": _auroc(noisy, filtered["discriminator_score"].to_numpy(float))},
    }
    p, r = out["precision"], out["recall"]
    out["f1"] = 2 * p * r / (p + r) if p == p and r == r and p + r > 0 else float("nan")
    kinds = filtered[["image_id"]].merge(truth[["image_id", "kind"]], on="image_id", how="left")["kind"]
    out["recall_by_kind"] = {
        str(kind): {"noisy": int((kinds == kind).sum()), "removed": int(((kinds == kind).to_numpy() & removed).sum())}
        for kind in sorted(kinds.dropna().unique())}
    out["by_stage"] = {
        stage: {"removed": int((removed & (filtered["decided_by"] == stage).to_numpy()).sum()),
                "removed_noisy": int((removed & noisy & (filtered["decided_by"] == stage).to_numpy()).sum())}
        for stage in DECIDERS}
    return out


# ---- the rule ------------------------------------------------------------------------------------------------------
def filter_noise(*, latents_dir: Path | str, out_index: Path | str, out_markdown: Path | str, out_figure: Path | str,
                 cfg: dict, seed: int, store_root: Path | str | None = None, store_index: Path | str | None = None,
                 resolution: int | None = None, truth_paths: list | None = None,
                 manifest_paths: list | None = None) -> dict:
    """LNFS over the latent cache in ``latents_dir``: writes the filtered index, the markdown fragment and the figure
    (score histograms; examples of removed images when ``store_root``/``store_index``/``resolution`` are given).
    ``truth_paths``/``manifest_paths``: the demo's noise truth and the ingestion manifests, for precision/recall."""
    from cxrgen.data.latents import load_latents

    cache = load_latents(latents_dir)
    index = cache.index.sort_values("row").reset_index(drop=True)
    features = np.asarray(cache.mean, dtype=np.float32).reshape(len(cache.index), -1)[index["row"].to_numpy()]
    fit_mask = index["split"].isin(cfg["fit_splits"]).to_numpy()
    scores = lnfs_scores(features, fit_mask, cfg, seed)
    filtered = pd.concat([index[["image_id", "split", "source", "view"]].reset_index(drop=True), scores], axis=1)
    filtered = filtered[list(INDEX_COLUMNS)].sort_values("image_id").reset_index(drop=True)
    if filtered["image_id"].duplicated().any():
        raise ValueError("latent cache lists an image id twice")

    truth = noise_truth(truth_paths or [], manifest_paths or []) if truth_paths else None
    metrics = evaluate(filtered, truth) if truth is not None else None
    summary = {
        "images": int(len(filtered)), "fitted_on": list(cfg["fit_splits"]),
        "removed": int(filtered["removed"].sum()), "kept": int(filtered["kept"].sum()),
        "removed_by_stage": {s: int((filtered["removed"] & (filtered["decided_by"] == s)).sum()) for s in DECIDERS},
        "confident_noisy": int((filtered["confident"] == "noisy").sum()),
        "confident_normal": int((filtered["confident"] == "normal").sum()),
        "discriminator_trained": bool(filtered["discriminator_score"].notna().any()),
        "latent_shape": list(cache.mean.shape[1:]), "evaluation": metrics,
    }
    for path in (out_index, out_markdown, out_figure):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(str(out_index) + ".tmp")
    filtered.to_parquet(tmp, index=False)
    tmp.replace(out_index)
    noisy_ids = set(truth["image_id"]) if truth is not None else None
    write_figure(filtered, Path(out_figure), noisy_ids, store_root, store_index, resolution)
    Path(out_markdown).write_text(markdown(summary, cfg, filtered, Path(out_figure).name))
    return summary


# ---- report ------------------------------------------------------------------------------------------------------
def _fmt(x: float) -> str:
    return "n/a" if x != x else f"{x:.3f}"


def markdown(summary: dict, cfg: dict, filtered: pd.DataFrame, figure_name: str) -> str:
    """The LNFS report fragment: decisions, per-stage counts and (with ground truth) precision/recall."""
    lines = [
        "## LNFS — latent noise filtering (Diff-CXR)", "",
        f"{summary['images']} cached latents ({'×'.join(map(str, summary['latent_shape']))} each); models fitted on "
        f"split(s) {', '.join(summary['fitted_on'])}, every image scored. Removed **{summary['removed']}**, kept "
        f"{summary['kept']} (nothing is deleted: `results/lnfs/filtered_index.parquet` lists every image).", "",
        f"Settings: k-means {cfg['kmeans']['clusters']} clusters on a {cfg['features']['pca_dims']}-d whitened PCA, "
        f"typical quantile {cfg['kmeans']['typical_quantile']}, outlier clusters < "
        f"{cfg['kmeans']['min_cluster_fraction']:.0%} of the images; manifold PCA {cfg['manifold']['components']}, "
        f"confident noisy z > {cfg['manifold']['noisy_z']}, confident normal z ≤ {cfg['manifold']['normal_z']}; "
        f"discriminator {cfg['discriminator']['kind']} (threshold {cfg['discriminator']['threshold']}, "
        f"{'trained' if summary['discriminator_trained'] else 'not trained: too few confident noisy images'}).", "",
        "| stage | confident set | removed |", "|---|---|---|",
        f"| 1 k-means (outlier clusters) / typical normal | normal: {summary['confident_normal']} | "
        f"{summary['removed_by_stage']['kmeans']} |",
        f"| 2 manifold score (error off / spread along the normal PCA) | noisy: {summary['confident_noisy']} | "
        f"{summary['removed_by_stage']['manifold']} |",
        f"| 3 discriminator (undecided images) | — | {summary['removed_by_stage']['discriminator']} |", "",
    ]
    by_source = filtered.groupby("source")["removed"].agg(["size", "sum"])
    lines += ["| source | images | removed |", "|---|---|---|"]
    lines += [f"| {s} | {int(r['size'])} | {int(r['sum'])} |" for s, r in by_source.iterrows()]
    lines.append("")
    ev = summary["evaluation"]
    if ev is None:
        lines.append("No ground truth (real data): precision/recall not measured.")
    else:
        lines += [
            f"**Against the injected demo noise** ({ev['noisy']} noisy of {ev['images']} images): precision "
            f"**{_fmt(ev['precision'])}**, recall **{_fmt(ev['recall'])}**, F1 {_fmt(ev['f1'])}, false-positive "
            f"rate on clean images {_fmt(ev['false_positive_rate'])}. AUROC of the stage scores: k-means distance "
            f"{_fmt(ev['auroc']['kmeans_distance'])}, manifold reconstruction error {_fmt(ev['auroc']['manifold_error'])}, "
            f"manifold score (max of error and spread z) {_fmt(ev['auroc']['manifold_z'])}, "
            f"discriminator {_fmt(ev['auroc']['discriminator_score'])}.", "",
            "| noise kind | noisy images | removed | recall |", "|---|---|---|---|",
        ]
        for kind, c in ev["recall_by_kind"].items():
            lines.append(f"| {kind} | {c['noisy']} | {c['removed']} | "
                         f"{_fmt(c['removed'] / c['noisy'] if c['noisy'] else float('nan'))} |")
        lines += ["", "| decided by | removed | of which injected noise |", "|---|---|---|"]
        lines += [f"| {s} | {c['removed']} | {c['removed_noisy']} |" for s, c in ev["by_stage"].items()]
        lines += ["", "The LNFS design details (T² + Q manifold score, centring on the nearest regular cluster) and the "
                  "default thresholds were chosen while looking at demo runs with this kind of ground truth; expect "
                  "lower numbers on noise the demo does not simulate. Cropped/zoomed films stay chest-like in a "
                  "64 px latent and are the hardest kind."]
    lines += ["", f"![LNFS scores and removed images]({figure_name})", ""]
    return "\n".join(lines)


def write_figure(filtered: pd.DataFrame, path: Path, noisy_ids: set | None, store_root, store_index,
                 resolution: int | None, examples: int = 8) -> None:
    """Histograms of the manifold z-score and the discriminator score (clean vs injected noise when known, else
    kept vs removed) and a row of removed images, highest score first."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    has_store = store_root is not None and store_index is not None and resolution is not None
    fig = plt.figure(figsize=(12, 5.6 if has_store else 3.6), dpi=100)
    grid = fig.add_gridspec(2 if has_store else 1, examples, height_ratios=[1.4, 1] if has_store else [1])
    if noisy_ids is not None:
        groups = {"clean": ~filtered["image_id"].isin(noisy_ids), "injected noise": filtered["image_id"].isin(noisy_ids)}
    else:
        groups = {"kept": filtered["kept"], "removed": filtered["removed"]}
    half = examples // 2
    for col, (column, title) in enumerate((("manifold_z", "manifold score: max robust z of log error / spread"),
                                          ("discriminator_score", "discriminator P(noisy)"))):
        ax = fig.add_subplot(grid[0, col * half:(col + 1) * half])
        values = filtered[column].to_numpy(float)
        finite = np.isfinite(values)
        if finite.any():
            bins = np.linspace(values[finite].min(), values[finite].max() + 1e-9, 40)
            for (name, mask), color in zip(groups.items(), ("tab:blue", "tab:red"), strict=True):
                ax.hist(values[finite & mask.to_numpy()], bins=bins, alpha=0.6, label=f"{name} ({int(mask.sum())})",
                        color=color)
            ax.set_yscale("log")
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "not computed", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(title, fontsize=9)
    if has_store:
        from cxrgen.store.shards import ShardStore

        index = pd.read_parquet(store_index)
        store = ShardStore(store_root, index)
        position = {image_id: i for i, image_id in enumerate(index["image_id"])}
        removed = filtered[filtered["removed"]].copy()
        removed["rank"] = removed["discriminator_score"].fillna(1.0) + removed["manifold_z"].rank(pct=True)
        shown = removed.sort_values("rank", ascending=False).head(examples)
        for c in range(examples):
            ax = fig.add_subplot(grid[1, c])
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(shown):
                continue
            row = shown.iloc[c]
            if row["image_id"] in position:
                ax.imshow(store.read_float(position[row["image_id"]], resolution), cmap="gray", vmin=0, vmax=1)
            label = "noise" if noisy_ids is not None and row["image_id"] in noisy_ids else (
                "clean" if noisy_ids is not None else "")
            ax.set_title(f"{row['source']} {label}\nz={row['manifold_z']:.1f} ({row['decided_by'][:5]})", fontsize=7)
        store.close()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)

