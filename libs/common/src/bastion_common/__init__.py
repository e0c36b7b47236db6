"""Code shared by the MCP Bastion services."""

__all__: list[str] = []
