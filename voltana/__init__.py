"""Voltana: SLO-aware, energy-efficient control plane for PD-disaggregated LLM serving."""

__version__ = "0.1.0"
