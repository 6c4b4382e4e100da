"""Unit tests of the operator package (pure core and edges with fakes)."""
