"""SGLang-like batching, written once: the per-instance prefill and decode schedulers that the
offline simulator (voltana.sim) drives in virtual time and the simulated engine
(voltana.engine) drives in real time."""
