"""Experiment configs: one `get_config(arg)` per file, variants via ':key=value'."""
