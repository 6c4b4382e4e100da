"""End-to-end runs of the real trainer on the tiny quickstart model."""
