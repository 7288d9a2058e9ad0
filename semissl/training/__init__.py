"""semissl.training."""
