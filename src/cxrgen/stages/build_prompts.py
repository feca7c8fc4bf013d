"""Stage ``build_prompts``: the prompt sets every generated variant samples.

Prompt sets (:func:`build_prompt_sets`):

* ``test_reports``: one prompt per distinct report of the held-out splits (labels = the report's image labels);
* ``class_balanced``: template report sentences per CheXpert finding (a few templates each, with laterality variants
  where a finding has a side; "No Finding" uses normal-study templates), ``n_per_finding`` prompts per finding;
* ``train_twins``: one prompt per sampled training image (its report, else a label-derived report; labels = the
  image's), the synthetic training pool of the downstream augmentation experiments (MedCoDi-M §4.5);
* ``reid_probe``: K rows (distinct seeds, one shared ``prompt_id``) per sampled frontal training image of a known
  patient, prompted like the twins: the re-identification audit's per-prompt statistics over seeds (CheXGenBench
  2025: 2,000 training prompts x 10 seeds). Sampled with its own random stream, independent of the twins' sample.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pandas as pd

from cxrgen.labels import CHEXPERT_LABELS, LABEL_COLUMNS, label_column
from cxrgen.prompts import PROBE_SET, label_template_report, template_variants

PROMPT_SETS = ("test_reports", "class_balanced", "train_twins", PROBE_SET)

def prompt_seed(base_seed: int, prompt_id: str) -> int:
    """A stable per-prompt seed (independent of set sizes and row order)."""
    return int.from_bytes(hashlib.sha256(f"{base_seed}:{prompt_id}".encode()).digest()[:8], "little") >> 33


def _texts(index: pd.DataFrame) -> pd.Series:
    if "text" in index.columns:  # latent-cache index
        return index["text"].fillna("").astype(str).str.strip()
    from cxrgen.train.data import report_texts

    return report_texts(index)


def build_prompt_sets(index: pd.DataFrame, cfg: dict) -> pd.DataFrame:
    """Prompts of the sets in ``cfg["sets"]`` from the unified (or latent-cache) index and section ``generate``.

    Columns: prompt_id, set, prompt, laterality, source_image_id, lbl_* (NaN = not stated), seed. Deterministic.
    ``prompt_id`` is unique except in the ``reid_probe`` set, whose K rows per image share it (distinct seeds).
    """
    seed = int(cfg["seed"])
    frames = []
    if "test_reports" in cfg["sets"]:
        rows = index[index["split"].isin(cfg["report_splits"])].copy()
        if cfg["views"]:
            rows = rows[rows["view"].isin(cfg["views"])]
        rows["prompt"] = _texts(rows).to_numpy()
        rows = rows[rows["prompt"].str.len() > 0].sort_values("image_id")
        rows = rows.drop_duplicates("prompt")  # one image per report
        if cfg["max_reports"] is not None:
            rows = rows.head(int(cfg["max_reports"]))
        reports = pd.DataFrame({"prompt_id": "rep-" + rows["image_id"].astype(str), "set": "test_reports",
                                "prompt": rows["prompt"], "laterality": "",
                                "source_image_id": rows["image_id"].astype(str)})
        for column in LABEL_COLUMNS:
            reports[column] = rows[column].to_numpy(dtype=np.float32)
        frames.append(reports)
    if "class_balanced" in cfg["sets"]:
        records = []
        for finding in cfg["findings"] or CHEXPERT_LABELS:
            variants = template_variants(finding)
            for k in range(int(cfg["n_per_finding"])):
                sentence, side = variants[k % len(variants)]
                labels = dict.fromkeys(LABEL_COLUMNS, np.nan)
                labels[label_column(finding)] = 1.0
                if finding == "No Finding":
                    labels = dict.fromkeys(LABEL_COLUMNS, 0.0)
                    labels[label_column("No Finding")] = 1.0
                else:
                    labels[label_column("No Finding")] = 0.0
                slug = label_column(finding).removeprefix("lbl_")
                records.append({"prompt_id": f"tpl-{slug}-{k:04d}", "set": "class_balanced", "prompt": sentence,
                                "laterality": side, "source_image_id": "", **labels})
        frames.append(pd.DataFrame.from_records(records, columns=["prompt_id", "set", "prompt", "laterality",
                                                                  "source_image_id", *LABEL_COLUMNS]))
    if "train_twins" in cfg["sets"]:
        frames.append(_train_twins(index, cfg))
    probe = _reid_probe(index, cfg) if PROBE_SET in cfg["sets"] else None
    if not frames and probe is None:
        raise ValueError(f"generate.sets is empty; choose from {PROMPT_SETS}")
    if frames:
        frames = [pd.concat(frames, ignore_index=True)]
        frames[0]["seed"] = [prompt_seed(seed, pid) for pid in frames[0]["prompt_id"]]
    if probe is not None and (len(probe) or not frames):
        frames.append(probe)
    prompts = pd.concat(frames, ignore_index=True)
    for column in LABEL_COLUMNS:
        prompts[column] = prompts[column].astype(np.float32)
    prompts["seed"] = prompts["seed"].astype(np.int64)
    return prompts.reset_index(drop=True)


def _train_twins(index: pd.DataFrame, cfg: dict) -> pd.DataFrame:
    """One prompt per sampled training-split image (a synthetic twin for the downstream experiments): its report, or
    a label-derived report when it has none; labels = that image's labels. Rows without any text are skipped."""
    twins = cfg["train_twins"]
    rows = _prompted_images(index, twins["splits"], cfg["views"])
    if twins["n"] is not None and len(rows) > int(twins["n"]):
        rows = rows.sample(n=int(twins["n"]), random_state=int(cfg["seed"])).sort_values("image_id")
    return _image_prompts(rows, "twin-", "train_twins")


def _reid_probe(index: pd.DataFrame, cfg: dict) -> pd.DataFrame:
    """``generate.reid_probe.seeds`` rows per sampled train-split image of the views ``generate.views`` with a
    pseudonymous patient (``patient_pid``; the audit compares each generated image with that patient's film),
    prompted like the twins. The sample uses its own random stream (a hash of (seed, "reid_probe")), so it does not
    follow the twins' sample; the K rows of an image share ``prompt_id`` ``probe-<image_id>`` and get distinct seeds
    (a hash of (seed, prompt_id, k)), so the generated image ids ``syn-<prompt_id>-s<seed>`` stay unique."""
    probe = cfg[PROBE_SET]
    if "patient_pid" not in index.columns:
        rows = index.iloc[:0]
    else:
        rows = index[index["patient_pid"].notna() & (index["patient_pid"].astype(str) != "")]
    rows = _prompted_images(rows, ["train"], cfg["views"])
    if len(rows) > int(probe["n"]):
        rows = rows.sample(n=int(probe["n"]), random_state=prompt_seed(int(cfg["seed"]), PROBE_SET))
        rows = rows.sort_values("image_id")
    once = _image_prompts(rows, "probe-", PROBE_SET)
    k = int(probe["seeds"])
    out = once.loc[once.index.repeat(k)].reset_index(drop=True)
    seeds = []
    for prompt_id in once["prompt_id"]:
        mine: list[int] = []
        for j in range(k):
            value, bump = prompt_seed(int(cfg["seed"]), f"{prompt_id}/{j}"), 0
            while value in mine:  # a 31-bit hash collision inside one prompt: take the next stream
                bump += 1
                value = prompt_seed(int(cfg["seed"]), f"{prompt_id}/{j}/{bump}")
            mine.append(value)
        seeds += mine
    out["seed"] = np.asarray(seeds, dtype=np.int64)
    return out


def _prompted_images(index: pd.DataFrame, splits, views) -> pd.DataFrame:
    """Images of ``splits`` and ``views`` (empty = all) sorted by id with a ``prompt``: the report, else a
    label-derived report; images without either are dropped."""
    rows = index[index["split"].isin(splits)].copy()
    if views:
        rows = rows[rows["view"].isin(views)]
    rows = rows.sort_values("image_id")
    texts = _texts(rows).to_numpy()
    labels = rows[list(LABEL_COLUMNS)].to_dict("records")
    rows["prompt"] = pd.Series([text or label_template_report(lbl, image_id)
                                for text, lbl, image_id in zip(texts, labels, rows["image_id"], strict=True)],
                               index=rows.index, dtype=object)
    return rows[rows["prompt"].str.len() > 0]


def _image_prompts(rows: pd.DataFrame, prefix: str, name: str) -> pd.DataFrame:
    out = pd.DataFrame({"prompt_id": prefix + rows["image_id"].astype(str), "set": name, "prompt": rows["prompt"],
                        "laterality": "", "source_image_id": rows["image_id"].astype(str)})
    for column in LABEL_COLUMNS:
        out[column] = rows[column].to_numpy(dtype=np.float32)
    return out.reset_index(drop=True)


def build_prompts(*, index_path: Path | str, cfg: dict, out_path: Path | str) -> dict:
    """Rule ``build_prompts``: the prompt sets of section ``generate`` from the unified index (``index_path``) as a
    parquet file ``out_path``. Returns counts per set."""
    prompts = build_prompt_sets(pd.read_parquet(index_path), cfg)
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(str(out_path) + ".tmp")
    prompts.to_parquet(tmp, index=False)
    os.replace(tmp, out_path)
    return {k: int(v) for k, v in prompts["set"].value_counts().items()}
