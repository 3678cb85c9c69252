"""The real-engine tier: Voltana against a real SGLang server (``scripts/test-real-engines``)."""
