"""Reconstruction chains of Cheff Table 2 on real held-out images.

x_HR (the store's high resolution) → bicubic (antialiased) → x_LR, then

* ``AE``: x_LR → E → D (posterior mode, deterministic), compared with x_LR at the low resolution;
* ``SR base`` / ``SR fine-tuned``: x_LR → SR, compared with x_HR;
* ``AE → SR base`` / ``AE → SR fine-tuned``: the full chain x_LR → E → D → SR, compared with x_HR;
* ``bicubic``: x_LR → bicubic upsampling, compared with x_HR (the reference row).

SR sampling is DDIM with one noise generator per image, seeded from the image id, so a row does not depend on the
batch it is computed in.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from cxrgen.evaluate import metrics as M

ROWS = ("bicubic", "AE", "SR base", "SR fine-tuned", "AE → SR base", "AE → SR fine-tuned")
CHAINS = {
    "bicubic": "x_HR → bicubic → x_LR → bicubic → x̂_HR",
    "AE": "x_HR → bicubic → x_LR → E → D → x̂_LR",
    "SR base": "x_HR → bicubic → x_LR → SR_base → x̂_HR",
    "SR fine-tuned": "x_HR → bicubic → x_LR → SR_fine → x̂_HR",
    "AE → SR base": "x_HR → bicubic → x_LR → E → D → SR_base → x̂_HR",
    "AE → SR fine-tuned": "x_HR → bicubic → x_LR → E → D → SR_fine → x̂_HR",
}


def image_seed(image_id: str, seed: int) -> int:
    return int.from_bytes(hashlib.sha256(f"recon:{seed}:{image_id}".encode()).digest()[:8], "little") >> 1


def autoencode(ae, x: torch.Tensor) -> torch.Tensor:
    """E then D with the posterior mode; images in [-1, 1]."""
    with torch.no_grad():
        return ae.decode(ae.encode(x).latent_dist.mode()).sample.clamp(-1.0, 1.0)


def run_chains(x_hr: torch.Tensor, image_ids: list[str], *, low_res: int, ae, sr_models: dict, sr_steps: int,
               seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Outputs of every chain for a batch ``x_hr`` ([B, 1, H, H] in [-1, 1]): ``{row: (prediction, target)}`` in
    [-1, 1]. ``sr_models`` maps "base"/"fine-tuned" to loaded SR models (missing = rows left out)."""
    from cxrgen.models.sr import resize_bicubic, super_resolve

    high = x_hr.shape[-1]
    x_lr = resize_bicubic(x_hr, low_res)
    out = {"bicubic": (resize_bicubic(x_lr, high), x_hr)}
    decoded = autoencode(ae, x_lr) if ae is not None else None
    if decoded is not None:
        out["AE"] = (decoded, x_lr)
    for key, model in sr_models.items():
        if model is None:
            continue

        def generators():
            return [torch.Generator().manual_seed(image_seed(i, seed)) for i in image_ids]

        out[f"SR {key}"] = (super_resolve(model, x_lr, steps=sr_steps, generator=generators()), x_hr)
        if decoded is not None:
            out[f"AE → SR {key}"] = (super_resolve(model, decoded, steps=sr_steps, generator=generators()), x_hr)
    return {row: out[row] for row in ROWS if row in out}


def per_image_metrics(prediction: torch.Tensor, target: torch.Tensor, with_ms_ssim: bool) -> dict[str, np.ndarray]:
    """MSE, PSNR, SSIM (and MS-SSIM) per image, computed in [0, 1] (inputs in [-1, 1])."""
    p = ((prediction + 1.0) / 2.0).clamp(0, 1)
    t = ((target + 1.0) / 2.0).clamp(0, 1)
    out = {"mse": M.mse(p, t), "psnr": M.psnr(p, t), "ssim": M.ssim(p, t)}
    if with_ms_ssim:
        out["ms_ssim"] = M.ms_ssim(p, t)
    return out
