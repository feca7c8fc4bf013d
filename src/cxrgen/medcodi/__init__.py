"""MedCoDi-M (Molino et al., arXiv 2501.04614; its later version is titled XGeM): multi-view, multi-prompt
any-to-any generation of frontal chest X-rays, lateral chest X-rays and report impressions in one shared latent
space."""
