"""Source adapters: one module per dataset (``cxrgen.sources.<name>``), each reading the dataset's native layout into
a manifest; ``cxrgen.sources.base.get_adapter(name)`` imports and returns it."""
