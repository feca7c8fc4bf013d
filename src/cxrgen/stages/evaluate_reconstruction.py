"""Rule ``evaluate_reconstruction``: MSE / PSNR / SSIM (/ MS-SSIM) of the Cheff Table 2 chains (autoencoder,
super-resolution base and fine-tuned, both chained, bicubic reference) on real held-out images, as one tracked job."""

from __future__ import annotations

import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from cxrgen.evaluate import metrics as M  # noqa: E402
from cxrgen.evaluate.features import iter_images, sample_rows, with_root  # noqa: E402
from cxrgen.evaluate.outputs import StagedFiles  # noqa: E402
from cxrgen.evaluate.tables import Fragment, with_ci  # noqa: E402
from cxrgen.train.job import tracked_job, write_json  # noqa: E402


def evaluate_reconstruction(*, index_path: Path | str, store_root: Path | str, ae_dir: Path | str,
                            sr_base_dir: Path | str, sr_dir: Path | str, cfg: dict, seed: int, low_res: int,
                            high_res: int, out_json: Path | str, out_html: Path | str, out_figure: Path | str,
                            out_markdown: Path | str, tracking_json: Path | str | None = None,
                            job_name: str = "evaluate_reconstruction") -> dict:
    """MSE / PSNR / SSIM (/ MS-SSIM) of the Cheff Table 2 chains on real reference images (x_HR at ``high_res``,
    x_LR = bicubic to ``low_res``)."""
    from cxrgen.evaluate.reconstruction import CHAINS, per_image_metrics, run_chains
    from cxrgen.models.autoencoder import load_autoencoder
    from cxrgen.models.sr import load_sr

    rcfg = cfg["reconstruction"]
    resamples, confidence = int(cfg["bootstrap"]["resamples"]), float(cfg["bootstrap"]["confidence"])
    params = {"evaluation": cfg, "seed": seed, "low_res": low_res, "high_res": high_res}
    with tracked_job(tracking_json, job_name, params=params, tags={"cxrgen.stage": "evaluate_reconstruction"}) as job:
        index = pd.read_parquet(index_path)
        views = cfg["views"]
        rows = index[index["split"].isin(cfg["reference_splits"]) & (index["view"].isin(views) if views else True)]
        rows = with_root(sample_rows(rows, rcfg["n"], seed), store_root)
        ae = load_autoencoder(ae_dir)
        sr_models = {"base": load_sr(sr_base_dir), "fine-tuned": load_sr(sr_dir)}
        per_row: dict[str, dict[str, list[np.ndarray]]] = {}
        examples: dict[str, torch.Tensor] = {}
        started = time.perf_counter()
        position = 0
        for images in iter_images(rows, high_res, int(rcfg["batch_size"]), desc="reconstruction"):
            ids = rows["image_id"].iloc[position : position + len(images)].astype(str).tolist()
            position += len(images)
            outputs = run_chains(images * 2.0 - 1.0, ids, low_res=low_res, ae=ae, sr_models=sr_models,
                                 sr_steps=int(rcfg["sr_steps"]), seed=seed)
            for name, (prediction, target) in outputs.items():
                with_ms = M.ms_ssim_unavailable_reason(target.shape[-1]) is None
                values = per_image_metrics(prediction, target, with_ms)
                for key, v in values.items():
                    per_row.setdefault(name, {}).setdefault(key, []).append(v)
                if name not in examples:
                    examples[name] = prediction[: int(rcfg["examples"])]
            examples.setdefault("x_HR", images[: int(rcfg["examples"])] * 2.0 - 1.0)
        results = {}
        for name, values in per_row.items():
            resolution = low_res if name == "AE" else high_res
            entry = {"chain": CHAINS[name], "resolution": resolution, "n": int(sum(len(v) for v in values["mse"]))}
            for key, parts in values.items():
                entry[key] = M.mean_interval(np.concatenate(parts), resamples=resamples, confidence=confidence,
                                             seed=seed).as_dict()
            reason = M.ms_ssim_unavailable_reason(resolution)
            if reason:
                entry["ms_ssim"] = {"value": None, "unavailable": reason}
            results[name] = entry
        payload = {"results": results, "seconds": time.perf_counter() - started,
                   "protocol": {"images": f"real {'+'.join(cfg['reference_splits'])} split(s), views {views}, "
                                          f"n={len(rows)} (seeded sample)",
                                "x_HR / x_LR": f"store images at {high_res} px; x_LR = antialiased bicubic to "
                                               f"{low_res} px",
                                "AE": "posterior mode (deterministic), compared with x_LR",
                                "SR": f"DDIM, {rcfg['sr_steps']} steps, eta 0, one seeded generator per image",
                                "metrics": "per image in [0, 1] (data range 1), then mean over images; SSIM Gaussian "
                                           "11 px σ 1.5; MS-SSIM 5 scales where the size allows",
                                "ci": M.describe_bootstrap(resamples, confidence) + " over images",
                                "models": f"AE {ae_dir}, SR base {sr_base_dir}, SR fine-tuned {sr_dir}"}}
        files = StagedFiles(job, {"json": out_json, "table": out_html, "figure": out_figure,
                                  "markdown": out_markdown})
        _reconstruction_figure(examples, files["figure"], low_res, high_res)
        fragment = Fragment("Reconstruction (Cheff Table 2 chains)")
        fragment.para("How much the autoencoder and the super-resolution model lose on real held-out images, alone and "
                      "chained; bicubic upsampling is the reference row.")
        fragment.protocol(payload["protocol"])
        table = [{"chain": name, "workflow": r["chain"], "compared at": f"{r['resolution']} px", "n": r["n"],
                  "MSE [CI]": with_ci(r["mse"], 4), "PSNR dB [CI]": with_ci(r["psnr"], 2),
                  "SSIM [CI]": with_ci(r["ssim"]),
                  "MS-SSIM": with_ci(r["ms_ssim"]) if r["ms_ssim"].get("value") is not None else "n/a (size)"}
                 for name, r in results.items()]
        fragment.table(pd.DataFrame(table), caption="Reconstruction on real held-out images")
        reasons = sorted({r["ms_ssim"]["unavailable"] for r in results.values() if r["ms_ssim"].get("unavailable")})
        for reason in reasons:
            fragment.para(f"MS-SSIM not computed: {reason}.")
        fragment.figure(out_figure, Path(out_markdown).parent, "reconstruction examples")
        fragment.write(files["table"], files["markdown"])
        headline = {f"{k}/{name}": r[k]["value"] for name, r in results.items() for k in ("mse", "psnr", "ssim")}
        job.log_metrics(headline)
        payload["mlflow_run_id"] = job.run_id
        write_json(files["json"], payload)
        files.publish(artifacts=["json", "figure"])
    return payload


def _reconstruction_figure(examples: dict[str, torch.Tensor], path, low_res: int, high_res: int) -> None:
    names = ["x_HR"] + [n for n in examples if n != "x_HR"]
    k = len(examples["x_HR"])
    fig, axes = plt.subplots(k, len(names), figsize=(1.9 * len(names), 1.9 * k + 0.4), squeeze=False)
    for c, name in enumerate(names):
        images = ((examples[name] + 1) / 2).clamp(0, 1)[:, 0].numpy()
        for r in range(k):
            ax = axes[r][c]
            ax.imshow(images[r], cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                size = low_res if name == "AE" else high_res
                ax.set_title(f"{name}\n({size} px)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)

