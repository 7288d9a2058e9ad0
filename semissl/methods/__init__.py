"""semissl.methods."""
