"""DDL-CXR (Yao, Liu et al., arXiv 2410.17918): ICU cohort from MIMIC-IV + MIMIC-CXR, the EHR-conditioned latent
diffusion model that generates an up-to-date CXR latent, and the ICU outcome predictors that fuse it with the EHR."""
