"""semissl.losses."""
