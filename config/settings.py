"""The one settings object of imagestream.

Every tunable lives here, read once from the environment (prefix ``IMAGESTREAM_``,
names fixed by DESIGN.md §3) and passed on as a frozen value.  Nothing else in the
code base reads ``os.environ`` for imagestream settings.

    >>> settings = Settings.from_env()
    >>> settings.upstream_concurrency
    3
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Settings", "SettingsError", "parse_size"]

ENV_PREFIX = "IMAGESTREAM_"

#: Upstream model used for edits (DashScope's name).
DEFAULT_MODEL = "qwen-image-edit"


class SettingsError(ValueError):
    """An environment variable holds a value that cannot be used."""


def host_data_dir(env: Mapping[str, str]) -> Path:
    """``$XDG_DATA_HOME/imagestream``, else ``~/.local/share/imagestream`` (XDG base dirs)."""
    base = env.get("XDG_DATA_HOME") or str(Path(env.get("HOME") or Path.home()) / ".local" / "share")
    return Path(base) / "imagestream"


def parse_size(text: str) -> tuple[int, int]:
    """Parse ``"1080x1920"`` into ``(1080, 1920)``."""
    try:
        width, height = (int(part) for part in text.lower().split("x", 1))
    except ValueError:
        raise SettingsError(f"expected WIDTHxHEIGHT, got {text!r}") from None
    if width <= 0 or height <= 0:
        raise SettingsError(f"sizes must be positive, got {text!r}")
    return width, height


def _parse_allowlist(text: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network | str, ...]:
    """Hosts or CIDRs, comma separated. Host names stay strings."""
    items: list[ipaddress.IPv4Network | ipaddress.IPv6Network | str] = []
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        try:
            items.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            items.append(item.lower())
    return tuple(items)


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Runtime configuration of a worker, the emulator's clients and the CLI.

    Build it with :meth:`from_env`; tests build it directly with keyword arguments.
    """

    # --- Kafka / Faust -------------------------------------------------------------
    app_id: str = "imagestream"
    kafka_bootstrap: str = "127.0.0.1:9092"
    topic_partitions: int = 8
    #: Prepended to every topic name (default none: the fixed names of DESIGN.md §4).
    #: Lets several deployments (staging, tests) share one Kafka cluster.
    topic_prefix: str = ""
    #: Faust consumer-group timings, tuned for quick joins on a small cluster.
    broker_session_timeout: float = 6.0  # the broker's minimum: a killed worker's partitions move fast
    broker_heartbeat_interval: float = 1.0
    broker_rebalance_timeout: float = 20.0
    #: Where a new consumer group starts: "earliest" (production) or "latest".
    consumer_auto_offset_reset: str = "earliest"
    #: Longest a consumer fetch waits for data on partitions that have none (Faust fixes
    #: 1.5 s; see :mod:`streams.transport` for why that stalls a pipeline of agents).
    consumer_fetch_wait: float = 0.02
    #: Seconds between offset commits (Faust ``broker_commit_interval``).
    commit_interval: float = 0.5
    #: Producer linger in seconds: how long a batch waits for company.
    producer_linger: float = 0.002
    #: Bytes per producer batch and partition (Faust's default is 16 KiB).  A 50-image
    #: job batch or status snapshot is 20-40 KB, and aiokafka makes the next send to a
    #: partition wait until its full batch is delivered: with 16 KiB nearly every such
    #: event costs a broker round trip of its own (cached path 3,100 → 3,600 images/s).
    producer_batch_bytes: int = 512 * 1024
    #: RocksDB memory per partition DB (Faust defaults are 2 GiB cache, 64 MiB buffers).
    rocksdb_block_cache_bytes: int = 8 * 1024 * 1024
    rocksdb_write_buffer_bytes: int = 4 * 1024 * 1024
    rocksdb_max_write_buffers: int = 2

    # --- Web -----------------------------------------------------------------------
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    #: Largest HTTP request body (multipart upload of a whole task).
    max_request_bytes: int = 64 * 1024 * 1024
    api_token: str | None = field(default=None, repr=False)
    #: The base of the links the worker hands out (``result_url``); unset = the web
    #: server it serves on (:attr:`public_url`).  Set it behind a proxy or load balancer.
    api_url: str | None = None
    #: How other workers reach this one's web server (for table_route forwarding);
    #: default ``http://WEB_HOST:WEB_PORT``.  Set it when binding 0.0.0.0.
    canonical_url: str | None = None

    # --- Storage -------------------------------------------------------------------
    data_dir: Path = Path("./data")
    #: Blob store: unset = the folder :attr:`blob_dir`, one per host (and user), so
    #: every worker of a host shares it whatever its DATA_DIR; ``s3://bucket/prefix``
    #: = an S3-compatible store (several hosts); ``file:///path`` = that folder.
    blob_url: str | None = None
    #: ``$XDG_DATA_HOME/imagestream`` (default ``~/.local/share/imagestream``): what
    #: the workers of one host share.
    host_data_dir: Path = field(default_factory=lambda: host_data_dir(os.environ))
    #: S3 endpoint (MinIO, versitygw, …); unset = AWS S3 itself.
    s3_endpoint: str | None = None
    s3_region: str = "us-east-1"
    #: Unset = botocore's own chain (AWS_ACCESS_KEY_ID…, instance roles). Never logged.
    s3_access_key: str | None = field(default=None, repr=False)
    s3_secret_key: str | None = field(default=None, repr=False)
    #: ``GET /api/v1/blobs/{sha}`` answers 302 to a presigned URL instead of streaming.
    blob_presign: bool = False
    blob_presign_ttl: float = 3600.0
    #: Largest blob the store accepts (refused before any byte is stored).
    blob_max_bytes: int = 64 * 1024 * 1024

    # --- Image edit ----------------------------------------------------------------
    model: str = DEFAULT_MODEL
    #: Model Studio region (``cn-beijing``, ``ap-southeast-1``): the endpoint the SDK
    #: calls (unless DASHSCOPE_HTTP_BASE_URL says otherwise), the price column and the
    #: limits of config/models.toml.  Keys of one region do not work in another.
    region: str = "cn-beijing"
    #: The SDK's DASHSCOPE_WORKSPACE_ID: with it, a non-Beijing region uses the SDK's
    #: own workspace endpoint (``{workspace}.{region}.maas.aliyuncs.com``).
    dashscope_workspace_id: str | None = None
    upstream_concurrency: int = 3
    upstream_rps: float | None = None
    upstream_timeout: float = 120.0
    upstream_max_attempts: int = 5
    upstream_backoff_base: float = 0.5
    upstream_backoff_max: float = 20.0
    #: Seconds between probe calls of a model blocked after an account-state error
    #: (arrears, not purchased, free quota used up); at most 30.
    upstream_probe_interval: float = 30.0
    max_images_per_task: int = 50
    max_image_bytes: int = 10 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    max_prompt_chars: int = 800
    #: Seconds a cached edit stays valid (None: forever; results are content-addressed).
    cache_ttl: float | None = None
    #: Images at most this large may travel inline (base64) in Kafka events.
    inline_image_bytes: int = 64 * 1024
    dashscope_api_key: str | None = field(default=None, repr=False)
    dashscope_base_url: str | None = None

    # --- Dimensions ----------------------------------------------------------------
    dimension_timeout: float = 10.0
    dimension_max_bytes: int = 4 * 1024 * 1024
    dimension_max_redirects: int = 5
    dimension_url_ttl: float = 24 * 3600.0
    #: Seconds a permanent fetch failure of a URL (404/410 and other 4xx, not an image,
    #: too large, refused address, too many redirects) is remembered: requests for it
    #: are answered at once with the placeholder and the error, without fetching
    #: (``refresh=true`` bypasses it).  0: not remembered.
    dimension_failure_ttl: float = 300.0
    #: The same for transient failures (timeouts, connection errors, 5xx, 408, 429).
    #: 0: not remembered (the next request fetches again).
    dimension_transient_failure_ttl: float = 15.0
    placeholder: tuple[int, int] = (1080, 1920)
    #: Header fetches one worker runs at once, over every host.  Object stores and
    #: CDNs answer hundreds of concurrent requests; at an origin latency L a worker
    #: fetches at most ``min(this, per_host) / L`` URLs of one host per second.
    dimension_fetch_concurrency: int = 1024
    #: Connections (so fetches) at once to one host; a fragile origin gets a lower
    #: cap in the headers file (``dimension_headers_file``).
    dimension_per_host: int = 512
    #: Items one ``POST /api/v1/dimensions/batch`` (or batch event) may carry.
    dimension_batch_max: int = 256
    #: TOML file: host pattern → request headers (User-Agent, Referer, ...) and an
    #: optional concurrency cap (:mod:`streams.dimensions.hosts`).  Unset: a default
    #: User-Agent for every host, no caps below ``dimension_per_host``.
    dimension_headers_file: Path | None = None
    fetch_allowlist: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network | str, ...] = ()

    # ------------------------------------------------------------------------------
    @property
    def blob_dir(self) -> Path:
        """The default blob folder: the host's, not the worker's DATA_DIR.  Blobs are
        content-addressed, written atomically and never modified, so any number of
        processes can share one folder."""
        return self.host_data_dir / "blobs"

    @property
    def table_dir(self) -> Path:
        """Where Faust keeps its RocksDB tables."""
        return self.data_dir / "tables"

    @property
    def web_url(self) -> str:
        """The URL other workers and clients use to reach this worker's web server."""
        if self.canonical_url:
            return self.canonical_url
        host = self.web_host
        if host in ("0.0.0.0", "::", ""):
            host = socket.gethostname()  # bound to every interface: others reach us by name
        return f"http://{host}:{self.web_port}"

    @property
    def public_url(self) -> str:
        """Where clients reach this worker's API: ``IMAGESTREAM_API_URL``, else :attr:`web_url`."""
        return (self.api_url or self.web_url).rstrip("/")

    def replace(self, **changes: object) -> Settings:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read the settings from ``environ`` (default: ``os.environ``).

        Unset or empty variables keep their defaults; malformed ones raise
        :class:`SettingsError` naming the variable.
        """
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}

        def get(name: str) -> str | None:
            value = env.get(ENV_PREFIX + name)
            return value if value not in (None, "") else None

        def convert(name: str, attr: str, kind: type) -> None:
            raw = get(name)
            if raw is None:
                return
            try:
                values[attr] = kind(raw)
            except ValueError as exc:
                raise SettingsError(f"{ENV_PREFIX}{name}={raw!r}: {exc}") from None

        for f in dataclasses.fields(cls):
            if f.name in _SPECIAL:
                continue
            kind = _KINDS.get(str(f.type))
            if kind is not None:
                convert(f.name.upper(), f.name, kind)

        # Fields whose env names or types are not the plain upper-cased field.
        if (raw := get("DATA_DIR")) is not None:
            values["data_dir"] = Path(raw)
        values["host_data_dir"] = host_data_dir(env)
        if (raw := get("DIMENSION_HEADERS_FILE")) is not None:
            values["dimension_headers_file"] = Path(raw)
        if (raw := get("PLACEHOLDER")) is not None:
            values["placeholder"] = parse_size(raw)
        if (raw := get("FETCH_ALLOWLIST")) is not None:
            values["fetch_allowlist"] = _parse_allowlist(raw)
        if (raw := get("BLOB_PRESIGN")) is not None:
            if raw.lower() not in _BOOLS:
                raise SettingsError(f"{ENV_PREFIX}BLOB_PRESIGN={raw!r}: expected true/false")
            values["blob_presign"] = _BOOLS[raw.lower()]
        # DashScope's own variables: read by its SDK too, repeated here so the
        # worker can tell "emulator" from "real service" and log which one.
        if env.get("DASHSCOPE_API_KEY"):
            values["dashscope_api_key"] = env["DASHSCOPE_API_KEY"]
        if env.get("DASHSCOPE_HTTP_BASE_URL"):
            values["dashscope_base_url"] = env["DASHSCOPE_HTTP_BASE_URL"]
        if env.get("DASHSCOPE_WORKSPACE_ID"):
            values["dashscope_workspace_id"] = env["DASHSCOPE_WORKSPACE_ID"]

        settings = cls(**values)  # type: ignore[arg-type]
        settings.validate()
        return settings

    def validate(self) -> None:
        """Raise :class:`SettingsError` for values that cannot work together."""
        if self.upstream_concurrency < 1:
            raise SettingsError("IMAGESTREAM_UPSTREAM_CONCURRENCY must be >= 1")
        if self.topic_partitions < 1:
            raise SettingsError("IMAGESTREAM_TOPIC_PARTITIONS must be >= 1")
        if self.upstream_rps is not None and self.upstream_rps <= 0:
            raise SettingsError("IMAGESTREAM_UPSTREAM_RPS must be > 0 when set")
        from config.catalogue import load_catalogue  # beside this module, no dependencies

        catalogue = load_catalogue()
        if self.region not in catalogue.regions:
            raise SettingsError(f"IMAGESTREAM_REGION={self.region!r}: expected one of {sorted(catalogue.regions)}")
        if self.model not in catalogue.models:
            raise SettingsError(f"IMAGESTREAM_MODEL={self.model!r} is not in config/models.toml")
        if not 0 < self.upstream_probe_interval <= 30:
            raise SettingsError("IMAGESTREAM_UPSTREAM_PROBE_INTERVAL must be in (0, 30] seconds")
        if self.max_images_per_task < 1:
            raise SettingsError("IMAGESTREAM_MAX_IMAGES_PER_TASK must be >= 1")
        if self.dimension_timeout <= 0:
            raise SettingsError("IMAGESTREAM_DIMENSION_TIMEOUT must be > 0")
        if not 0 < self.consumer_fetch_wait <= 1.5:
            raise SettingsError("IMAGESTREAM_CONSUMER_FETCH_WAIT must be in (0, 1.5] seconds")
        if not 16 * 1024 <= self.producer_batch_bytes <= 1_000_000:
            raise SettingsError("IMAGESTREAM_PRODUCER_BATCH_BYTES must be in [16384, 1000000] "
                                "(a batch must fit the broker's 1 MB message limit)")
        if self.dimension_failure_ttl < 0 or self.dimension_transient_failure_ttl < 0:
            raise SettingsError("IMAGESTREAM_DIMENSION_FAILURE_TTL and _TRANSIENT_FAILURE_TTL must be >= 0")
        if self.dimension_fetch_concurrency < 1 or self.dimension_per_host < 1:
            raise SettingsError("IMAGESTREAM_DIMENSION_FETCH_CONCURRENCY and _PER_HOST must be >= 1")
        if not 1 <= self.dimension_batch_max <= 10_000:
            raise SettingsError("IMAGESTREAM_DIMENSION_BATCH_MAX must be in [1, 10000]")
        if self.blob_url is not None:
            scheme, _, rest = self.blob_url.partition("://")
            if scheme not in ("s3", "file") or not rest.strip("/"):
                raise SettingsError("IMAGESTREAM_BLOB_URL must be s3://bucket[/prefix] or file:///path")
        if not 0 < self.blob_presign_ttl <= 7 * 24 * 3600:
            raise SettingsError("IMAGESTREAM_BLOB_PRESIGN_TTL must be in (0, 604800] seconds (SigV4 limit)")
        if self.blob_max_bytes < 1:
            raise SettingsError("IMAGESTREAM_BLOB_MAX_BYTES must be >= 1")


#: Fields read by hand in :meth:`Settings.from_env`.
_SPECIAL = frozenset(
    {
        "data_dir",
        "host_data_dir",
        "dimension_headers_file",
        "placeholder",
        "fetch_allowlist",
        "dashscope_api_key",
        "dashscope_base_url",
        "dashscope_workspace_id",
        "blob_presign",
    }
)

#: Field types read from their ``IMAGESTREAM_<FIELD>`` variable as they are.
_KINDS: dict[str, type] = {"int": int, "float": float, "str": str, "str | None": str, "float | None": float}

_BOOLS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}
