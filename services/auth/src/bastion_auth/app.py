"""Wiring of the auth service: create_app(settings) builds the FastAPI app, nothing more."""

from __future__ import annotations

from fastapi import FastAPI

from bastion_auth.settings import Settings
from bastion_common.service import create_service_app

__all__ = ["create_app"]


def create_app(settings: Settings) -> FastAPI:
    return create_service_app(settings, title="MCP Bastion auth")
