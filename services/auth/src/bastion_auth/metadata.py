"""Authorization server metadata (RFC 8414), also served as openid-configuration.

`issuer` is the configured public URL, spelled once (`Settings.issuer`), so it is
string-identical here, in every token's `iss` and in every authorization response's `iss`
(RFC 9207). The document is built with the mcp SDK's `OAuthMetadata` model, so what we
publish is what the SDK's OAuth client parses.
"""

from __future__ import annotations

from typing import Any

from mcp.shared.auth import OAuthMetadata

from bastion_auth.settings import Settings

__all__ = ["metadata_document"]


def metadata_document(settings: Settings) -> dict[str, Any]:
    issuer = settings.issuer
    scopes = sorted({s for offered in settings.resources.values() for s in offered})
    model = OAuthMetadata.model_validate(
        {
            "issuer": issuer,
            "authorization_endpoint": f"{issuer}/authorize",
            "token_endpoint": f"{issuer}/token",
            "registration_endpoint": f"{issuer}/register",
            "revocation_endpoint": f"{issuer}/revoke",
            "introspection_endpoint": f"{issuer}/introspect",
            "scopes_supported": scopes,
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
            "token_endpoint_auth_methods_supported": [
                "none",
                "client_secret_basic",
                "client_secret_post",
            ],
            "revocation_endpoint_auth_methods_supported": [
                "none",
                "client_secret_basic",
                "client_secret_post",
            ],
            "introspection_endpoint_auth_methods_supported": [
                "client_secret_basic",
                "client_secret_post",
            ],
            "code_challenge_methods_supported": ["S256"],
            "client_id_metadata_document_supported": True,
            "authorization_response_iss_parameter_supported": True,
        }
    )
    doc = model.model_dump(mode="json", exclude_none=True)
    # pydantic's AnyHttpUrl may append "/" to a bare origin: keep the configured spelling.
    doc["issuer"] = issuer
    doc["jwks_uri"] = f"{issuer}/jwks.json"
    doc["resource_indicators_supported"] = sorted(settings.resources)
    if settings.idjag_issuers:  # RFC 7523 with ID-JAG assertions (bastion_auth.idjag)
        doc["grant_types_supported"].append("urn:ietf:params:oauth:grant-type:jwt-bearer")
    if settings.exchange_audiences:  # RFC 8693 for the gateway (bastion_auth.exchange)
        doc["grant_types_supported"].append("urn:ietf:params:oauth:grant-type:token-exchange")
    return doc
