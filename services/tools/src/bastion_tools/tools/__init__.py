"""The eight tools of DESIGN.md: weather (Redis), files (sandbox), admin (auth, audit)."""

__all__: list[str] = []
