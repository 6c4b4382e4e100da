"""Unit tests of the trainer components (progress, model decisions, merge)."""
