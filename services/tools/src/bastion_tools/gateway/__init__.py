"""The gateway: upstream MCP servers behind the same pipeline as the built-in tools
(docs/gateway.md). `Gateway` (registry) holds each upstream's link and tools; the
`GatewayForwarder` SDK middleware lists and forwards them; `Rules` is what the guard and
the policy judge calls by; `admin_router` serves review and approval of held tools."""

from __future__ import annotations

from bastion_tools.gateway.admin import admin_router
from bastion_tools.gateway.forward import GatewayForwarder
from bastion_tools.gateway.pins import PinStore
from bastion_tools.gateway.record import GatewayRecord
from bastion_tools.gateway.registry import Gateway, Rules

__all__ = ["Gateway", "GatewayForwarder", "GatewayRecord", "PinStore", "Rules", "admin_router"]
