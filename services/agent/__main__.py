"""Run a node agent: ``python -m voltana.services.agent --backend nvml --listen 0.0.0.0:50054``.

The same as ``voltana serve agent`` (one set of flags, logging, tracing and security options;
the control-plane token comes from $VOLTANA_CONTROL_TOKEN or --token-file, never the command
line where every local user could read it with ps).
"""

from __future__ import annotations

import sys

from voltana.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["serve", "agent", *sys.argv[1:]]))
