"""``cxrgen`` command line: sample chest X-rays from a trained pipeline.

    cxrgen generate --model results/ldm --prompt "Large right pleural effusion." -n 8 --seed 0 --out grid.png

MedCoDi-M / XGeM any-to-any directions (models of the workflow's medcodi branch under ``--results``):

    cxrgen generate --from-frontal frontal.png --to lateral,report --out generated/
    cxrgen generate --from-report "Small left pleural effusion." --to frontal,lateral --prompting single --out gen/

Inpainting / outpainting (Cheff §5) of a film where a mask PNG is white:

    cxrgen inpaint --model results/models/ldm/cheff --image cxr.png --mask mask.png --prompt "No support devices."
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cxrgen", description="Chest X-ray synthesis (cxrgen).")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    gen = commands.add_parser(
        "generate", help="sample images for report prompts (or MedCoDi-M any-to-any directions)",
        description="Sample images from an LDM directory (rule train_ldm's output) into a grid PNG. The autoencoder, "
                    "text encoder and (optional) SR model are found through <model>/cxrgen_pipeline.json unless "
                    "given. With --from-frontal / --from-lateral / --from-report and --to: MedCoDi-M (XGeM) "
                    "any-to-any generation of frontal film, lateral film and/or report from the other modalities, "
                    "with the models of the medcodi branch under --results; --out is then a directory.")
    gen.add_argument("--model", type=Path, help="LDM directory (with unet/, scheduler/, cxrgen_pipeline.json); "
                                                "required unless generating MedCoDi-M directions")
    gen.add_argument("--prompt", action="append", default=None,
                     help="report text; repeat for several rows (default: the empty report, i.e. unconditional)")
    gen.add_argument("-n", "--num", type=int, default=4, help="samples per prompt (columns), default 4")
    gen.add_argument("--seed", type=int, default=0, help="first seed; sample c of a prompt uses seed+c")
    gen.add_argument("--steps", type=int, default=None,
                     help="DDIM steps (default: Cheff code 100; MedCoDi-M paper demo 50)")
    gen.add_argument("--eta", type=float, default=None,
                     help="DDIM eta (default 1 for images (Cheff, MedCoDi-M demo), 0 for MedCoDi-M reports)")
    gen.add_argument("--guidance", type=float, default=None,
                     help="classifier-free guidance scale, 1 = off (default: 4; MedCoDi-M paper demo 7.5)")
    gen.add_argument("--batch-size", type=int, default=16)
    gen.add_argument("--ae", type=Path, default=None, help="autoencoder dir (overrides cxrgen_pipeline.json)")
    gen.add_argument("--text-encoder", type=Path, default=None, help="text encoder dir (overrides the json)")
    gen.add_argument("--sr", type=Path, default=None, help="super-resolution model dir (overrides the json)")
    gen.add_argument("--no-sr", action="store_true", help="skip super-resolution")
    gen.add_argument("--sr-steps", type=int, default=100, help="DDIM steps of the SR model (Cheff code: 100)")
    gen.add_argument("--out", type=Path, required=True,
                     help="output grid PNG (MedCoDi-M directions: output directory)")
    gen.add_argument("--save-images", type=Path, default=None, help="also write each image as a 16-bit PNG here")
    anytoany = gen.add_argument_group("MedCoDi-M (XGeM) any-to-any directions")
    anytoany.add_argument("--from-frontal", type=Path, metavar="PATH", help="frontal film (PNG, JPEG or DICOM)")
    anytoany.add_argument("--from-lateral", type=Path, metavar="PATH", help="lateral film (PNG, JPEG or DICOM)")
    anytoany.add_argument("--from-report", metavar="TEXT_OR_FILE", help="report impression, or a text file with it")
    anytoany.add_argument("--to", metavar="MODALITIES",
                          help="what to generate: frontal, lateral and/or report, comma-separated (not an input)")
    anytoany.add_argument("--results", type=Path, default=Path("results"),
                          help="the workflow's results directory with medcodi/ (default: results)")
    anytoany.add_argument("--prompting", choices=["multi", "single"], default="multi",
                          help="multi-prompt models (MedCoDi-M, default) or the single-prompt ablation (MedCoDi)")
    anytoany.add_argument("--geometry", choices=["pad", "crop"], default="pad",
                          help="how input films are made square, as the store's (config ingest.geometry; default "
                               "pad)")
    _inpaint_parser(commands)
    return parser


def _inpaint_parser(commands) -> None:
    from cxrgen.models.inpainting import InpaintSettings

    defaults = InpaintSettings()
    inp = commands.add_parser(
        "inpaint", help="inpaint / outpaint a film where a mask is white (RePaint resampling with the LDM)",
        description="Regenerate the masked region of a film (PNG, JPEG or DICOM) with a report-conditioned LDM "
                    "directory, the rest of the film fixed (Cheff §5; RePaint-style resampling). The film is made "
                    "square (--geometry) and resized to the autoencoder's resolution; the mask (same size as the "
                    "film; nonzero = regenerate) goes through the same steps. Outpainting: mask the border.")
    inp.add_argument("--model", type=Path, required=True, help="LDM directory (with cxrgen_pipeline.json)")
    inp.add_argument("--image", type=Path, required=True, help="the film (PNG, JPEG or DICOM)")
    inp.add_argument("--mask", type=Path, required=True, help="mask image, same size as the film; nonzero = regenerate")
    inp.add_argument("--prompt", default="", help="report text for the regenerated region (default: unconditional)")
    inp.add_argument("--out", type=Path, default=Path("inpainted.png"), help="output 16-bit PNG (default inpainted.png)")
    inp.add_argument("--steps", type=int, default=defaults.steps, help=f"DDIM steps (default {defaults.steps})")
    inp.add_argument("--eta", type=float, default=defaults.eta)
    inp.add_argument("--guidance", type=float, default=defaults.guidance_scale,
                     help=f"classifier-free guidance scale, 1 = off (default {defaults.guidance_scale})")
    inp.add_argument("--jump-length", type=int, default=defaults.jump_length,
                     help=f"RePaint jump length (default {defaults.jump_length})")
    inp.add_argument("--jump-n-sample", type=int, default=defaults.jump_n_sample,
                     help=f"RePaint resamplings per jump point, 1 = no jumps (default {defaults.jump_n_sample})")
    inp.add_argument("--paste-known", action="store_true", help="paste the original pixels outside the mask")
    inp.add_argument("--seed", type=int, default=0)
    inp.add_argument("--geometry", choices=["pad", "crop"], default="pad", help="how the film is made square")
    inp.add_argument("--ae", type=Path, default=None, help="autoencoder dir (overrides cxrgen_pipeline.json)")
    inp.add_argument("--text-encoder", type=Path, default=None, help="text encoder dir (overrides the json)")


def _square(pixels, size: int, geometry: str):
    import numpy as np

    from cxrgen.imaging.geometry import resize_square, to_square

    return np.array(resize_square(to_square(np.asarray(pixels, dtype=np.float32), geometry), size))


def _inpaint(args: argparse.Namespace) -> int:
    import numpy as np
    import torch
    from PIL import Image

    from cxrgen.imaging.decode import decode_image
    from cxrgen.imaging.errors import RejectedImage
    from cxrgen.models.inpainting import InpaintSettings, inpaint
    from cxrgen.pipeline import CxrPipeline, to_uint16

    try:
        film = decode_image(args.image, check_body_part=False).pixels
        with Image.open(args.mask) as mask_image:
            mask = np.asarray(mask_image.convert("F"), dtype=np.float32) > 0
    except (FileNotFoundError, RejectedImage, OSError) as err:
        raise SystemExit(f"cxrgen inpaint: {err}") from None
    if mask.shape != film.shape:
        raise SystemExit(f"cxrgen inpaint: mask {args.mask} is {mask.shape[1]}x{mask.shape[0]} px, which does not "
                         f"match the image's {film.shape[1]}x{film.shape[0]} px")
    if not mask.any():
        raise SystemExit(f"cxrgen inpaint: mask {args.mask} has no nonzero pixel (nothing to regenerate)")
    pipe = CxrPipeline.from_dir(args.model, ae_dir=args.ae, clip_dir=args.text_encoder, use_sr=False)
    size = int(pipe.autoencoder.config.sample_size)
    image = torch.from_numpy(_square(film, size, args.geometry))[None, None] * 2 - 1
    masks = torch.from_numpy(_square(mask, size, args.geometry) > 0)[None, None]  # any coverage counts as masked
    settings = InpaintSettings(steps=args.steps, eta=args.eta, guidance_scale=args.guidance,
                               jump_length=args.jump_length, jump_n_sample=args.jump_n_sample,
                               paste_known=args.paste_known)
    out = inpaint(pipe.autoencoder, pipe.sampler, image, masks, [args.prompt], [args.seed], settings)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(to_uint16(out["images"])[0]).save(args.out)
    print(f"wrote {args.out} ({size} px, {100 * float(masks.float().mean()):.1f}% regenerated, "
          f"{out['model_calls']} denoiser calls)")
    return 0


def _any_to_any_requested(args: argparse.Namespace) -> bool:
    return any(v is not None for v in (args.from_frontal, args.from_lateral, args.from_report, args.to))


def _generate_any(args: argparse.Namespace) -> int:
    from cxrgen.medcodi.anytoany import Sampling, check_request, generate_any, parse_outputs

    if args.model is not None:
        raise SystemExit("cxrgen generate: --model is for report-prompted LDMs; MedCoDi-M directions use --results")
    try:
        if args.to is None:
            raise ValueError("--to is required with --from-*: frontal, lateral and/or report")
        outputs = parse_outputs(args.to)
        inputs = [m for m, v in (("frontal", args.from_frontal), ("lateral", args.from_lateral),
                                 ("report", args.from_report)) if v is not None]
        check_request(inputs, outputs)
        for path in (args.from_frontal, args.from_lateral):
            if path is not None and not path.is_file():
                raise ValueError(f"input film {path} does not exist")
    except ValueError as err:
        raise SystemExit(f"cxrgen generate: {err}") from None
    defaults = Sampling()
    sampling = Sampling(steps=defaults.steps if args.steps is None else args.steps,
                        guidance=defaults.guidance if args.guidance is None else args.guidance,
                        image_eta=defaults.image_eta if args.eta is None else args.eta,
                        report_eta=defaults.report_eta if args.eta is None else args.eta)
    seeds = [args.seed + c for c in range(args.num)]
    from cxrgen.imaging.errors import RejectedImage

    try:
        generated = generate_any(args.results, args.prompting, frontal=args.from_frontal, lateral=args.from_lateral,
                                 report=args.from_report, outputs=outputs, seeds=seeds, sampling=sampling,
                                 geometry=args.geometry, ae_dir=args.ae)
    except (FileNotFoundError, RejectedImage) as err:
        raise SystemExit(f"cxrgen generate: {err}") from None
    from PIL import Image

    from cxrgen.pipeline import to_uint16

    args.out.mkdir(parents=True, exist_ok=True)
    written = []
    for output, samples in generated.items():
        for seed, sample in zip(seeds, samples, strict=True):
            if output == "report":
                path = args.out / f"report_seed{seed}.txt"
                path.write_text(sample + "\n", encoding="utf-8")
            else:
                path = args.out / f"{output}_seed{seed}.png"
                Image.fromarray(to_uint16(sample[None])[0]).save(path)
            written.append(path.name)
    print(f"wrote {len(written)} file(s) to {args.out} ({', '.join(inputs)} -> {', '.join(outputs)}, "
          f"{args.prompting}-prompt models): {', '.join(written)}")
    return 0


def _generate(args: argparse.Namespace) -> int:
    if args.num < 1:
        raise SystemExit("cxrgen generate: -n must be at least 1")
    if _any_to_any_requested(args):
        return _generate_any(args)
    if args.model is None:
        raise SystemExit("cxrgen generate: give --model (an LDM directory), or --from-frontal / --from-lateral / "
                         "--from-report with --to for MedCoDi-M directions")
    import torch

    from cxrgen.models.diffusion import SamplerSettings
    from cxrgen.pipeline import CxrPipeline, to_uint16
    from cxrgen.report.figures import save_grid

    args.steps = 100 if args.steps is None else args.steps
    args.eta = 1.0 if args.eta is None else args.eta
    args.guidance = 4.0 if args.guidance is None else args.guidance
    prompts = args.prompt or [""]
    pipe = CxrPipeline.from_dir(args.model, ae_dir=args.ae, clip_dir=args.text_encoder, sr_dir=args.sr,
                                use_sr=not args.no_sr)
    settings = SamplerSettings(steps=args.steps, eta=args.eta, guidance_scale=args.guidance)
    items = [(p, args.seed + c) for p in prompts for c in range(args.num)]
    images = []
    for start in range(0, len(items), args.batch_size):
        chunk = items[start : start + args.batch_size]
        out = pipe([p for p, _ in chunk], [s for _, s in chunk], settings, sr_steps=args.sr_steps)
        images.append(out["high"] if out["high"] is not None else out["low"])
    images = torch.cat(images)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_grid(images, [p[:40] or "(empty report)" for p in prompts], args.num, args.out)
    if args.save_images:
        from PIL import Image

        args.save_images.mkdir(parents=True, exist_ok=True)
        for (p_index, c), pixels in zip([(i, c) for i in range(len(prompts)) for c in range(args.num)],
                                        to_uint16(images), strict=True):
            Image.fromarray(pixels).save(args.save_images / f"prompt{p_index:02d}_seed{args.seed + c}.png")
    print(f"wrote {args.out} ({len(prompts)} prompt(s) x {args.num} samples, {images.shape[-1]} px)")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command is None:
        _parser().print_help()
        return 0
    if args.command == "generate":
        return _generate(args)
    if args.command == "inpaint":
        return _inpaint(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
