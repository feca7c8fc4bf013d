"""MedCoDi-M (Molino et al., arXiv 2501.04614; the later version is titled XGeM): multi-view, multi-prompt any-to-any
generation of frontal CXR, lateral CXR and report in one shared latent space."""
