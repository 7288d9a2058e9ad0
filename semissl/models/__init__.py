"""semissl.models."""
