"""The eight built-in tools: weather (Redis), files (sandbox), admin (auth, audit).

See docs/architecture.md, "Tools".
"""

__all__: list[str] = []
