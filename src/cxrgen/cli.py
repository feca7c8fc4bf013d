"""``cxrgen`` command line: sample chest X-rays from a trained pipeline.

    cxrgen generate --model results/ldm --prompt "Large right pleural effusion." -n 8 --seed 0 --out grid.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cxrgen", description="Chest X-ray synthesis (cxrgen).")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    gen = commands.add_parser(
        "generate", help="sample images for report prompts and save a grid PNG",
        description="Sample images from an LDM directory (rule train_ldm's output). The autoencoder, text encoder "
                    "and (optional) SR model are found through <model>/cxrgen_pipeline.json unless given.")
    gen.add_argument("--model", required=True, type=Path, help="LDM directory (with unet/, scheduler/, "
                                                               "cxrgen_pipeline.json)")
    gen.add_argument("--prompt", action="append", default=None,
                     help="report text; repeat for several rows (default: the empty report, i.e. unconditional)")
    gen.add_argument("-n", "--num", type=int, default=4, help="samples per prompt (columns), default 4")
    gen.add_argument("--seed", type=int, default=0, help="first seed; sample c of a prompt uses seed+c")
    gen.add_argument("--steps", type=int, default=100, help="DDIM steps (Cheff code: 100)")
    gen.add_argument("--eta", type=float, default=1.0, help="DDIM eta (Cheff: 1 for the LDM)")
    gen.add_argument("--guidance", type=float, default=4.0, help="classifier-free guidance scale (1 = off)")
    gen.add_argument("--batch-size", type=int, default=16)
    gen.add_argument("--ae", type=Path, default=None, help="autoencoder dir (overrides cxrgen_pipeline.json)")
    gen.add_argument("--text-encoder", type=Path, default=None, help="text encoder dir (overrides the json)")
    gen.add_argument("--sr", type=Path, default=None, help="super-resolution model dir (overrides the json)")
    gen.add_argument("--no-sr", action="store_true", help="skip super-resolution")
    gen.add_argument("--sr-steps", type=int, default=100, help="DDIM steps of the SR model (Cheff code: 100)")
    gen.add_argument("--out", type=Path, required=True, help="output grid PNG")
    gen.add_argument("--save-images", type=Path, default=None, help="also write each image as a 16-bit PNG here")
    return parser


def _generate(args: argparse.Namespace) -> int:
    import torch

    from cxrgen.models.diffusion import SamplerSettings
    from cxrgen.pipeline import CxrPipeline, to_uint16
    from cxrgen.report.figures import save_grid

    if args.num < 1:
        raise SystemExit("cxrgen generate: -n must be at least 1")
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
    return 2


if __name__ == "__main__":
    sys.exit(main())
