"""Wiring of the keys service: create_app(settings) builds the FastAPI app, nothing more."""

from __future__ import annotations

from fastapi import FastAPI

from bastion_common.service import create_service_app
from bastion_keys.settings import Settings

__all__ = ["create_app"]


def create_app(settings: Settings) -> FastAPI:
    return create_service_app(settings, title="MCP Bastion keys")
