"""Source adapters: one module per dataset, each reading the dataset's native layout into a manifest."""

from cxrgen.sources import base  # noqa: F401

# Adapter modules register themselves on import.
from cxrgen.sources import brax, chexpert, iuxray, mimic, nih, padchest, vindr  # noqa: F401,E402
