"""The offline classical engine: spine axis, bone masks, disc cuts and level identification, no weights."""
