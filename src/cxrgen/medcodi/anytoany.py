"""MedCoDi-M / XGeM any-to-any generation from user inputs (``cxrgen generate --from-frontal/--from-lateral/
--from-report ... --to frontal,lateral,report``).

The given inputs are embedded by the prompt encoders (images read and preprocessed like the store's films: decoded,
padded or cropped to a square and resized to the encoders' resolution, then scaled to [-1, 1] as
:class:`cxrgen.train.data.StoreImages` does), combined into one condition (:func:`cxrgen.medcodi.prompting.combine`,
paper Eq. 1) and every requested output is sampled from its own generator: the view LDMs
(:func:`cxrgen.medcodi.ldm.sample_view`, decoded by the autoencoder recorded in the LDM's manifest) and the report
diffusion model (:func:`cxrgen.medcodi.text_diffusion.sample_reports`). Several outputs are generated independently
(the joint cross-modal alignment of paper §2.3 is not used here).

Models are found under a results directory as the workflow writes them (``medcodi/prompt_encoders``,
``medcodi/ldm/{view}-{prompting}``, ``medcodi/report_diffusion/{prompting}``, ``medcodi/text_vae``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# the CLI validates a request before importing torch (cxrgen.medcodi.prompting: MODALITIES, PROMPTINGS)
MODALITIES = ("frontal", "lateral", "report")
PROMPTINGS = ("multi", "single")
GEOMETRIES = ("pad", "crop")
# the model directories a direction needs and the rule that writes each (named in the error when one is missing)
RULES = {"prompt_encoders": "train_prompt_encoders", "frontal": "train_medcodi_ldm", "lateral": "train_medcodi_ldm",
         "report": "train_report_diffusion", "text_vae": "train_text_vae"}


def model_dirs(results: Path | str, prompting: str) -> dict[str, Path]:
    """The directories of the prompt encoders, both view LDMs, the report diffusion model and the report VAE of
    ``prompting`` under ``results``."""
    if prompting not in PROMPTINGS:
        raise ValueError(f"prompting = {prompting!r}; allowed: {', '.join(PROMPTINGS)}")
    medcodi = Path(results) / "medcodi"
    return {"prompt_encoders": medcodi / "prompt_encoders", "frontal": medcodi / "ldm" / f"frontal-{prompting}",
            "lateral": medcodi / "ldm" / f"lateral-{prompting}",
            "report": medcodi / "report_diffusion" / prompting, "text_vae": medcodi / "text_vae"}


def parse_outputs(text: str) -> list[str]:
    """``"frontal,lateral"`` -> the requested outputs (each once, in the given order); unknown names raise."""
    outputs = list(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    unknown = [o for o in outputs if o not in MODALITIES]
    if not outputs or unknown:
        raise ValueError(f"--to {text!r}: choose one or more of {', '.join(MODALITIES)} (comma-separated)")
    return outputs


def check_request(inputs: Sequence[str], outputs: Sequence[str]) -> None:
    """At least one input and one output, and no modality that is both given and asked for."""
    if not inputs:
        raise ValueError("give at least one input: --from-frontal PATH, --from-lateral PATH or --from-report TEXT")
    both = [m for m in outputs if m in inputs]
    if both:
        raise ValueError(f"{', '.join(both)} is both an input and a requested output; MedCoDi-M generates a modality "
                         "from the OTHER ones (drop it from --to or from the inputs)")


def required_dirs(results: Path | str, prompting: str, outputs: Sequence[str]) -> dict[str, Path]:
    """The model directories ``outputs`` need; a missing one raises FileNotFoundError naming the rule to run."""
    dirs = model_dirs(results, prompting)
    needed = ["prompt_encoders", *outputs, *(["text_vae"] if "report" in outputs else [])]
    for name in needed:
        if not dirs[name].is_dir():
            raise FileNotFoundError(f"{dirs[name]} is missing: run `snakemake {dirs[name]}` (rule {RULES[name]}) or "
                                    "point --results at a run that has it")
    return {name: dirs[name] for name in needed}


def report_text(value: str) -> str:
    """``--from-report``: the content of a text file when ``value`` names one, else ``value`` itself."""
    path = Path(value)
    try:
        if path.is_file():
            return path.read_text(encoding="utf-8").strip()
    except OSError:  # a long report text is not a valid file name
        pass
    return value.strip()


def read_prompt_image(path: Path | str, resolution: int, geometry: str = "pad") -> torch.Tensor:
    """A film (PNG, JPEG or DICOM) as the prompt encoders saw the store's films: decoded to [0, 1] (DICOM with its VOI
    window), made square (``geometry``: pad as MedCoDi-M §3.1, or crop; config key ``ingest.geometry``), resized to
    ``resolution`` and stored as 16 bit, then scaled to [-1, 1] -> [1, resolution, resolution]."""
    import numpy as np
    import torch

    from cxrgen.imaging.decode import decode_image
    from cxrgen.imaging.geometry import preprocess

    if geometry not in GEOMETRIES:
        raise ValueError(f"geometry = {geometry!r}; allowed: {', '.join(GEOMETRIES)}")
    decoded = decode_image(Path(path), check_body_part=False)
    pixels = preprocess(decoded, target_spacing_mm=None, policy=geometry, resolutions=[int(resolution)])[
        int(resolution)]
    return torch.from_numpy(pixels.astype(np.float32) / 65535.0 * 2.0 - 1.0)[None]


@dataclass
class Sampling:
    """Sampling settings (paper demo: 50 DDIM steps, guidance 7.5; η 1 for images, 0 for reports)."""

    steps: int = 50
    guidance: float = 7.5
    image_eta: float = 1.0
    report_eta: float = 0.0


def condition(encoders, inputs: dict[str, torch.Tensor | str]) -> torch.Tensor:
    """[1, D]: the combined prompt embedding of the given inputs (images [1, H, W] in [-1, 1], the report a string)."""
    import torch

    from cxrgen.medcodi.prompting import combine

    embeddings = []
    for modality in MODALITIES:
        if modality not in inputs:
            continue
        if modality == "report":
            embeddings.append(encoders.encode_texts([inputs[modality]]))
        else:
            embeddings.append(encoders.encode_images(inputs[modality][None]))
    stacked = torch.stack(embeddings, dim=1).cpu()  # [1, k, D]
    return combine(stacked, torch.ones(stacked.shape[:2], dtype=torch.bool))


def generate_any(results: Path | str, prompting: str, *, frontal: Path | str | None = None,
                 lateral: Path | str | None = None, report: str | None = None, outputs: Sequence[str],
                 seeds: Sequence[int], sampling: Sampling | None = None, geometry: str = "pad",
                 ae_dir: Path | str | None = None) -> dict[str, list]:
    """Generate ``outputs`` (frontal / lateral / report) from the given inputs, one sample per seed: images as
    [1, H, W] tensors in [-1, 1], reports as strings. ``ae_dir`` overrides the autoencoder of the LDM manifests."""
    given = {m: v for m, v in (("frontal", frontal), ("lateral", lateral), ("report", report)) if v is not None}
    check_request(list(given), outputs)
    sampling = sampling or Sampling()
    dirs = required_dirs(results, prompting, outputs)
    from cxrgen.medcodi.prompt_encoders import load_prompt_encoders

    encoders = load_prompt_encoders(dirs["prompt_encoders"])
    prompts = {m: report_text(str(v)) if m == "report" else read_prompt_image(v, encoders.resolution, geometry)
               for m, v in given.items()}
    cond = condition(encoders, prompts).repeat(len(seeds), 1)
    generated: dict[str, list] = {}
    for output in outputs:
        if output == "report":
            generated[output] = sample_report_outputs(dirs["report"], dirs["text_vae"], cond, seeds, sampling)
        else:
            generated[output] = sample_view_outputs(dirs[output], cond, seeds, sampling, ae_dir)
    return generated


def sample_view_outputs(model_dir: Path, cond: torch.Tensor, seeds: Sequence[int], sampling: Sampling,
                        ae_dir: Path | str | None = None) -> list[torch.Tensor]:
    from cxrgen.medcodi.ldm import load_view_ldm, sample_view
    from cxrgen.models.autoencoder import load_autoencoder
    from cxrgen.models.diffusion import decode_latents

    model = load_view_ldm(model_dir)
    latents = sample_view(model_dir, cond, list(seeds), steps=sampling.steps, guidance=sampling.guidance,
                          eta=sampling.image_eta, model=model)
    autoencoder = load_autoencoder(ae_dir if ae_dir is not None else (model_dir / model[2]["autoencoder"]).resolve())
    return list(decode_latents(autoencoder, latents))


def sample_report_outputs(model_dir: Path, vae_dir: Path, cond: torch.Tensor, seeds: Sequence[int],
                          sampling: Sampling) -> list[str]:
    from cxrgen.medcodi.text_diffusion import sample_reports

    return sample_reports(model_dir, vae_dir, cond, list(seeds), steps=sampling.steps, guidance=sampling.guidance,
                          eta=sampling.report_eta)
