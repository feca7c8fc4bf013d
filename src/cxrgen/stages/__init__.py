"""One public function per pipeline stage (called by the thin workflow adapters)."""
