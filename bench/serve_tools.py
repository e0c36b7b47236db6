"""The tools service as `python -m bastion_tools` runs it (its settings from the
environment, `create_app`, uvicorn), with the benchmark's tool-CPU switch applied first
(`harness.tool_cpu_from_env`: nothing unless BENCH_TOOL_CPU_MS is set).

    BENCH_TOOL_CPU_MS=1 TOOLS_...=... .venv/bin/python bench/serve_tools.py
"""

from __future__ import annotations

from harness import tool_cpu_from_env

if __name__ == "__main__":
    tool_cpu_from_env()

    from bastion_tools.__main__ import main

    main()
