"""Settings of the audit service (environment variables prefixed AUDIT_)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from bastion_common.settings import Secret, ServiceSettings

__all__ = ["Settings"]


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="AUDIT_", extra="ignore", populate_by_name=True)

    service_name: str = "audit"
    checkpoint_key: Secret = Field(description="seeds the Ed25519 key that signs checkpoints")
    event_keys: dict[str, Secret] = Field(
        default_factory=dict,
        description="JSON {service: key}: every publisher's audit entry key (eventsign);"
        " empty: entries are stored unchecked (verified null), with a warning at start",
    )
    db_path: str = Field(default="audit.sqlite3", description="SQLite file of the audit store")
    public_url: str = Field(
        default="http://localhost:8004", description="canonical URI: the audience of tokens"
    )
    auth_issuer: str = "http://localhost:8001"
    auth_internal_url: str = Field(default="http://localhost:8001", description="JWKS from here")

    consumer_group: str = "audit-collectors"
    consumer_name: str = Field(default="", description="defaults to the host name")
    batch_size: int = Field(default=1000, ge=1, le=10_000)
    block_ms: int = Field(default=1000, ge=10, le=60_000)
    claim_idle_ms: int = Field(
        default=30_000, ge=100, description="claim entries a consumer held this long (XAUTOCLAIM)"
    )
    claim_interval_s: float = Field(default=5.0, gt=0)

    checkpoint_interval_s: float = Field(default=60.0, gt=0)
    anchor_margin_s: float = Field(
        default=60.0,
        gt=0,
        description="verify fails when the newest anchor is older than"
        " the checkpoint interval plus this",
    )
    witness_path: str = Field(
        default="", description="file (on another volume) that also holds the newest anchor"
    )
    checkpoint_every: int = Field(default=10_000, ge=1, description="events between checkpoints")
    retention_days: float = Field(default=90.0, ge=0, description="0 keeps events forever")
    prune_interval_s: float = Field(default=3600.0, gt=0)
    metrics_interval_s: float = Field(default=2.0, gt=0)

    # Alert thresholds of the security report (alerts.py).
    alert_brute_force_failures: int = Field(default=10, ge=1)
    alert_spray_accounts: int = Field(default=5, ge=2)
    alert_denial_burst: int = Field(default=20, ge=1)
    alert_denial_burst_window_s: int = Field(default=300, ge=1)
    alert_file_reads: int = Field(default=100, ge=1)
    alert_token_ips: int = Field(default=3, ge=2)
    alert_baseline_factor: float = Field(default=5.0, gt=1)
    alert_baseline_min_events: int = Field(default=50, ge=1)
    alert_baseline_periods: int = Field(default=7, ge=1)
