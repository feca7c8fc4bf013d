"""MedCoDi-M (Molino et al., arXiv 2501.04614; its later version is titled XGeM, same method): multi-view, multi-prompt
any-to-any generation of frontal CXR, lateral CXR and the report's impression from one shared latent space.

Modules: :mod:`~cxrgen.medcodi.studies` (the study-level view of the store: a study's frontal film, lateral film and
report), :mod:`~cxrgen.medcodi.prompt_encoders` (the contrastively aligned prompt encoders that map all three
modalities into one space, and the study embeddings the generators are conditioned on).
"""
