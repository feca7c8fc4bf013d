"""Image decoding (DICOM/PNG/JPEG) and geometry (spacing resampling, pad/crop, resize)."""
