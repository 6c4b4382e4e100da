"""Test data shared by several tiers (unit, apiserver, e2e)."""
