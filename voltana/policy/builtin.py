"""Registers the dynamic policies shipped with Voltana."""
