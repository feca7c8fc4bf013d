"""Model builders and save/load with their own configs (open_clip configs, diffusers save_pretrained)."""
