"""bastion_audit."""

__all__: list[str] = []
