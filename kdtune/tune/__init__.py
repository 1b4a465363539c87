"""Search layer (imports Ray lazily)."""
