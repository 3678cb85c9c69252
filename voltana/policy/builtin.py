"""Registers the dynamic policies shipped with Voltana (imported lazily by the registry)."""

from voltana.policy.paper import build_paper_suite
from voltana.policy.registry import register_policy

register_policy("voltana-paper", build_paper_suite)
from voltana.policy.voltana import build_voltana_suite  # noqa: E402

register_policy("voltana", build_voltana_suite)
