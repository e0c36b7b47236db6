"""bastion_keys."""

__all__: list[str] = []
