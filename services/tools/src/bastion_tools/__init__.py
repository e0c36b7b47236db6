"""bastion_tools."""

__all__: list[str] = []
