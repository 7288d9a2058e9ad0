"""semissl.data."""
