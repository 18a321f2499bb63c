"""One module per command group; each command declares its options and makes one call."""
