"""DDL-CXR ICU branch (arXiv 2410.17918): the MIMIC-IV cohort (table readers, stay/image/pair selection, hourly
time series, HCUP-CCS phenotypes) and, built on it, the EHR-conditioned latent CXR model and outcome predictors."""
