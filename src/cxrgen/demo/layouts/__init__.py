"""One writer per source: the native on-disk layout of that dataset, filled with phantoms."""
