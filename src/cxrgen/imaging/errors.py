"""Machine-readable reasons why a source file is not ingested."""

from __future__ import annotations

from enum import StrEnum


class RejectReason(StrEnum):
    UNREADABLE = "unreadable"  # not a parseable DICOM/PNG/JPEG, truncated file, decoder error
    NO_PIXEL_DATA = "no_pixel_data"
    UNSUPPORTED_PHOTOMETRIC = "unsupported_photometric"  # RGB, PALETTE COLOR, YBR… on a radiograph
    UNSUPPORTED_TRANSFER_SYNTAX = "unsupported_transfer_syntax"  # no installed decoder handles it
    WRONG_MODALITY = "wrong_modality"  # CT, MR, US… (radiographs are CR/DX/DR)
    WRONG_BODY_PART = "wrong_body_part"  # DICOM says e.g. EXTREMITY, not CHEST
    MULTI_FRAME = "multi_frame"
    DEGENERATE_IMAGE = "degenerate_image"  # constant image, too small, absurd aspect ratio
    MISSING_METADATA = "missing_metadata"  # file on disk without a row in the source's metadata tables
    MISSING_FILE = "missing_file"  # metadata row whose file is absent (reported, not a source file)
    EXCLUDED_VIEW = "excluded_view"  # view not selected by config ingest.views
    DUPLICATE = "duplicate"  # pixel-identical to an image kept earlier


class RejectedImage(Exception):
    """Raised by decoders/ingestion for a file that must go to the rejection manifest (never kills a shard)."""

    def __init__(self, reason: RejectReason, detail: str = ""):
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)
        self.reason = reason
        self.detail = detail
