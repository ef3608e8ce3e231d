"""Settings of the API process, read from the environment (prefix ``MINICLOUD_``)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from scheduler.pipeline import Multipliers, UnknownWeigher
from scheduler.resources import DISK_GB, MEMORY_MB, VCPU, default_ratio


class Settings(BaseSettings):
    """One settings object per process; tests override it through ``get_settings``."""

    model_config = SettingsConfigDict(env_prefix="MINICLOUD_", extra="ignore")

    data_dir: Path = Field(default=Path.home() / ".local/share/minicloud")
    database_url: str = ""
    host: str = "127.0.0.1"
    port: int = 8774
    # HTTPS: PEM certificate (chain) and its private key; both or neither (then plain HTTP).
    tls_certfile: Path | None = None
    tls_keyfile: Path | None = None

    # OpenStack surface (docs/openstack.md): the URL clients reach this API at (absolute links
    # and the catalog; empty: http://<host>:<port>) and the region the catalog names.
    public_url: str = ""
    region_name: str = Field(default="RegionOne", min_length=1, max_length=64)

    token_ttl_seconds: int = Field(default=8 * 3600, gt=0)
    enrollment_token_ttl_seconds: int = Field(default=3600, gt=0)
    bootstrap_admin_token: str | None = None
    # Login throttle (docs/security.md): failed logins per user name and per client address
    # within one window; beyond that, 429 until the window ends.
    login_failures_per_user: int = Field(default=10, gt=0)
    login_failures_per_address: int = Field(default=50, gt=0)
    login_throttle_window_seconds: int = Field(default=300, gt=0)

    # Pool-wide allocation ratios (an inventory's own ratio wins); one field per resource
    # class of ``scheduler.resources``, whose registry holds the defaults.
    cpu_allocation_ratio: float = Field(default=default_ratio(VCPU), gt=0)
    ram_allocation_ratio: float = Field(default=default_ratio(MEMORY_MB), gt=0)
    disk_allocation_ratio: float = Field(default=default_ratio(DISK_GB), gt=0)

    default_quota_instances: int = Field(default=10, ge=0)
    default_quota_vcpus: int = Field(default=20, ge=0)
    default_quota_ram_mb: int = Field(default=51200, ge=0)
    default_quota_disk_gb: int = Field(default=1000, ge=0)
    # Images a project may hold (not deleted), and their uploaded bytes together.
    default_quota_images: int = Field(default=100, ge=0)
    default_quota_image_bytes: int = Field(default=256 * 1024**3, ge=0)

    # Database connection pool of each API process (docs/operations.md): a request waits at
    # most db_pool_timeout_seconds for a connection, then answers 503 database_busy.
    db_pool_size: int = Field(default=10, gt=0)
    db_max_overflow: int = Field(default=10, ge=0)
    db_pool_timeout_seconds: float = Field(default=5.0, gt=0)
    # PostgreSQL: a statement waits at most this long for a row or table lock, then the request
    # answers 503 database_busy (a safety net against a transaction that never lets go).
    db_lock_timeout_seconds: float = Field(default=60.0, gt=0)
    # PostgreSQL: write-heavy requests (server create, actions, delete) handled at once per API
    # process; more wait on the event loop, holding no thread or connection (SQLite: 1).
    write_turns_per_process: int = Field(default=2, gt=0)
    # Agent enrollments, inventories and heartbeats handled at once per API process; more wait
    # up to agent_admission_wait_seconds for a turn, then answer 503 agent_busy.
    agent_admission_concurrency: int = Field(default=8, gt=0)
    agent_admission_wait_seconds: float = Field(default=2.0, ge=0)
    # Retry-After of 503 answers (agent_busy, database_busy); database_unavailable uses 5x.
    retry_after_seconds: int = Field(default=1, gt=0)
    # GET /metrics: admin token required unless this is true (e.g. a loopback-only API).
    metrics_public: bool = False

    max_image_bytes: int = Field(default=64 * 1024**3, gt=0)
    # Largest request body of every route but the image upload (which streams under
    # ``max_image_bytes``); refused with 413 before parsing. user_data alone may be 64 KiB.
    max_request_body_bytes: int = Field(default=1024 * 1024, gt=0)
    # /readyz reports the image store full (503) below this much free space.
    image_store_min_free_bytes: int = Field(default=64 * 1024**2, ge=0)

    # Refused server actions recorded as ``error`` events per server within any 60 seconds;
    # further refusals are answered the same but not recorded.
    rejected_action_events_per_minute: int = Field(default=10, ge=0)

    # Compute hosts: a host is down after this long without a heartbeat.
    host_down_after_seconds: int = Field(default=60, gt=0)
    heartbeat_interval_seconds: int = Field(default=10, gt=0)
    # A host whose heartbeats arrive but whose agent completed no reconcile pass for this long
    # is degraded (no new placements). Keep it above the agent's long-poll bound plus its
    # longest legitimate pass (a large image download).
    host_degraded_after_seconds: int = Field(default=300, gt=0)
    # Heartbeats that change nothing but the time are written together, once per this period
    # (api.agent.liveness).
    heartbeat_flush_seconds: float = Field(default=1.0, gt=0)
    # Transitions that make no progress this long end in ERROR (api.servers.timeouts):
    # BUILD; DELETING; REBOOT, resizing, pausing and unpausing (one "operation" limit).
    build_timeout_seconds: int = Field(default=600, gt=0)
    delete_timeout_seconds: int = Field(default=600, gt=0)
    operation_timeout_seconds: int = Field(default=600, gt=0)
    # Automatic evacuation of down hosts (off by default): seconds after a host went down, by
    # availability zone ("*": every zone), e.g. '{"edge": 300}'. A host's aggregate tag
    # ``auto_evacuate_after_seconds`` wins over its zone's entry.
    auto_evacuate_after_seconds: dict[str, int] = Field(default_factory=dict)
    # Longest wait of the agent's desired-state long-poll (woken by a change, api.agent.notifier).
    agent_long_poll_max_seconds: float = Field(default=30.0, gt=0)
    # Serial console tail kept per server.
    console_max_bytes: int = Field(default=64 * 1024, gt=0)
    # Weigher multipliers keyed by weigher plugin name (``scheduler.pipeline.WEIGHERS``), e.g.
    # MINICLOUD_SCHEDULER_WEIGHT_MULTIPLIERS='{"ram": -1.0}'; negative ram/cpu multipliers pack
    # hosts instead of spreading. Weighers not named get the default; a default of null makes
    # every weigher need an entry. Validated at startup (an unknown name fails loudly).
    scheduler_weight_multipliers: dict[str, float] = Field(default_factory=dict)
    scheduler_default_weight_multiplier: float | None = 1.0
    # Fresh snapshots a placement may take when concurrent claims keep winning the race.
    scheduler_max_attempts: int = Field(default=20, gt=0)
    # Billing (docs/billing.md): a run shorter than this is billed this long; 0 turns it off.
    billing_minimum_run_seconds: int = Field(default=60, ge=0)
    # Migration (api.mobility): a step that makes no progress this long is reverted to the
    # source (a dead agent on either side; a cold move's copy counts as one step).
    migration_step_timeout_seconds: int = Field(default=1800, gt=0)
    # Live migration (docs/operations.md, "Live migration"): the longest pause of the guest
    # for the switch-over, and how long the source's copy may run before it is aborted (the
    # guest then keeps running on the source).
    live_migration_max_downtime_ms: int = Field(default=300, gt=0)
    live_migration_timeout_seconds: int = Field(default=600, gt=0)
    # Guest metrics (docs/operations.md, "Guest metrics"): rollup levels as [step, retention]
    # pairs in seconds, finest first; every derived sample is added to each level, and rows
    # older than a level's retention are pruned every guest_metrics_prune_interval_seconds.
    guest_metrics_levels: list[tuple[int, int]] = Field(
        default_factory=lambda: [(10, 3600), (60, 86400), (3600, 30 * 86400)], min_length=1)
    guest_metrics_prune_interval_seconds: float = Field(default=60.0, gt=0)
    # Rows one prune statement deletes at most; a longer backlog goes on with the next batch.
    guest_metrics_prune_batch: int = Field(default=20_000, gt=0)
    # Servers with per-server gauges on /metrics (the busiest by cpu_util of the last
    # finest-level bucket): bounds the exposition's label cardinality.
    guest_metrics_exposed_servers: int = Field(default=100, ge=0, le=10_000)

    # Scaling groups (docs/scaling.md): how often the leader reconciles every group, how long
    # its database lease lasts without renewal (another API process takes over after that),
    # members launched per group and pass, and the backoff of failed launches (doubling from
    # base up to max).
    scaling_interval_seconds: float = Field(default=10.0, gt=0)
    scaling_lease_seconds: float = Field(default=30.0, gt=0)
    scaling_launches_per_pass: int = Field(default=10, gt=0)
    scaling_retry_base_seconds: float = Field(default=10.0, gt=0)
    scaling_retry_max_seconds: float = Field(default=300.0, gt=0)
    # Activities kept per group: a refused launch trims the older ones beyond this.
    scaling_activities_kept: int = Field(default=1000, gt=0)

    # How long an API process may answer a bearer secret from memory (docs/security.md): a
    # revocation made in another API process takes effect there within this time; 0: off.
    auth_cache_seconds: float = Field(default=5.0, ge=0, le=60)
    # How long an API process may answer a host credential from memory (api.agent.fastpath,
    # docs/security.md); rotation, revocation and deletion drop it at once; 0: off (and with
    # it the raw fast path of idle heartbeats and long-polls).
    host_credential_cache_seconds: float = Field(default=300.0, ge=0, le=3600)

    @model_validator(mode="after")
    def _weighers(self) -> Settings:
        try:
            self.multipliers()
        except UnknownWeigher as error:
            raise ValueError(f"scheduler_weight_multipliers: {error}") from None
        return self

    @field_validator("guest_metrics_levels")
    @classmethod
    def _levels(cls, value: list[tuple[int, int]]) -> list[tuple[int, int]]:
        steps = [step for step, _ in value]
        if any(step <= 0 or keep < step for step, keep in value):
            raise ValueError("each guest metrics level is [step > 0, retention >= step]")
        if steps != sorted(set(steps)):
            raise ValueError("guest metrics levels go from the finest step to the coarsest")
        return value

    def multipliers(self) -> Multipliers:
        """The weigher multipliers; raises UnknownWeigher (see ``scheduler.pipeline``)."""
        return Multipliers(self.scheduler_weight_multipliers,
                           default=self.scheduler_default_weight_multiplier)

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @property
    def effective_database_url(self) -> str:
        """The configured URL, or an SQLite file in the data directory."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_dir / 'minicloud.db'}"

    @property
    def effective_public_url(self) -> str:
        """The configured public URL without a trailing slash, or one from host and port."""
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")

    @property
    def image_dir(self) -> Path:
        """Where uploaded image bytes live."""
        return self.data_dir / "images"

    @property
    def console_dir(self) -> Path:
        """Where the agents' serial console tails live."""
        return self.data_dir / "console"


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings (cached; ``get_settings.cache_clear()`` re-reads)."""
    return Settings()
