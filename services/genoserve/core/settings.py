"""Typed settings: one object, built once at the entry point and passed down.

Precedence, lowest to highest: defaults < YAML file < environment (``GENOSERVE_*``) < CLI flags.
Nested fields are reached in the environment with ``__`` (``GENOSERVE_SERVER__PORT=50052``);
a few common ones also have flat aliases (``GENOSERVE_PORT``). Nothing below the entry point
reads the environment.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from genoserve.core.errors import GenoserveError

ENV_PREFIX = "GENOSERVE_"
#: Environment variables that are not settings fields but read by the entry point itself.
ENV_META = {"GENOSERVE_CONFIG"}
#: Flat aliases for the settings people set most often.
ENV_ALIASES: dict[str, tuple[str, ...]] = {
    "GENOSERVE_HOST": ("server", "host"),
    "GENOSERVE_PORT": ("server", "port"),
    "GENOSERVE_METRICS_PORT": ("server", "metrics_port"),
    "GENOSERVE_HEALTH_PORT": ("server", "health_port"),
    "GENOSERVE_MODEL_DIR": ("runtime", "model_dir"),
    "GENOSERVE_MODEL_REPOSITORY": ("runtime", "model_repository"),
    "GENOSERVE_DEVICE": ("runtime", "device"),
    "GENOSERVE_TOKENS_FILE": ("server", "auth", "tokens_file"),
    "GENOSERVE_LOG_LEVEL": ("logging", "level"),
    "GENOSERVE_BROKER_URL": ("jobs", "broker_url"),
    "GENOSERVE_STORE_URL": ("jobs", "store_url"),
    "GENOSERVE_DATA_DIR": ("jobs", "data_dir"),
}


class SettingsError(GenoserveError):
    code = "INVALID_ARGUMENT"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TlsSettings(_Section):
    """Server TLS. With ``client_ca_file`` set, clients must present a certificate it signed (mTLS)."""

    cert_file: Path | None = None
    key_file: Path | None = None
    client_ca_file: Path | None = None

    @model_validator(mode="after")
    def _pair(self) -> TlsSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("tls.cert_file and tls.key_file must be given together")
        if self.client_ca_file is not None and self.cert_file is None:
            raise ValueError("tls.client_ca_file (mTLS) needs tls.cert_file and tls.key_file")
        return self

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None


class AuthSettings(_Section):
    """Bearer-token auth. ``tokens_file`` holds one ``<token> [tenant]`` per line (# comments)."""

    tokens_file: Path | None = None
    #: Tenants allowed to change what is served and to list the store (``Models/Load``,
    #: ``Models/Unload``, ``Models/RepositoryIndex``) when tokens are on; with auth off, anyone
    #: who reaches the port may.
    admin_tenants: tuple[str, ...] = ("admin",)

    @property
    def enabled(self) -> bool:
        return self.tokens_file is not None


class ServerSettings(_Section):
    host: str = "localhost"
    port: int = Field(50051, ge=0, le=65535)
    #: Prometheus /metrics HTTP port; 0 turns the endpoint off.
    metrics_port: int = Field(9095, ge=0, le=65535)
    #: Plaintext port serving only grpc.health.v1, for probes that cannot speak TLS (Kubernetes'
    #: native gRPC probes); 0 turns it off. Health carries no data and needs no token.
    health_port: int = Field(0, ge=0, le=65535)
    max_message_bytes: int = Field(64 * 1024 * 1024, gt=0)
    #: SIGTERM: stop accepting, let in-flight requests finish for up to this long.
    grace_period_s: float = Field(30.0, ge=0)
    keepalive_time_s: float = Field(30.0, gt=0)
    keepalive_timeout_s: float = Field(10.0, gt=0)
    #: Connections are closed (GOAWAY) after this age so clients re-resolve behind a Service.
    max_connection_age_s: float = Field(300.0, gt=0)
    max_connection_age_grace_s: float = Field(30.0, ge=0)
    max_concurrent_rpcs: int | None = Field(None, gt=0)
    #: Read request tensors that clients on this machine leave in POSIX shared memory
    #: (``Tensor.shared_memory``, objects named ``genoserve*`` under /dev/shm) instead of
    #: receiving their bytes. Only for trusted co-located clients: a client that shrinks an
    #: object while its request is read crashes the server.
    shared_memory: bool = False
    tls: TlsSettings = TlsSettings()
    auth: AuthSettings = AuthSettings()


class BatchingSettings(_Section):
    """Defaults for every model's dynamic batcher; a model.yaml ``batching:`` block overrides."""

    max_batch_size: int = Field(64, gt=0)
    max_queue_delay_us: int = Field(500, ge=0)
    max_queue_size: int = Field(1024, gt=0)
    #: Refuse at once (RESOURCE_EXHAUSTED) a request with a deadline when the work queued ahead of
    #: it, as estimated from the model's recently timed session calls, cannot finish before that
    #: deadline, instead of queueing it to miss it (``genoserve.runtime.admission``). Never before
    #: a call was timed nor while the queue is empty; requests without a deadline are bounded by
    #: ``max_queue_size`` only.
    deadline_admission: bool = True
    #: With ``deadline_admission``: the fraction of the time left to a request's deadline kept for
    #: what follows the model call (post-processing, the response) and for the estimate's error;
    #: the queued work and the request's own must be estimated to finish within the rest.
    deadline_headroom: float = Field(0.2, ge=0, lt=1)


class ModelStoreSettings(_Section):
    """S3-compatible object storage for ``runtime.model_repository: s3://bucket/prefix``.

    Empty fields fall back to the standard ``AWS_*`` environment variables (``AWS_ACCESS_KEY_ID``,
    ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_REGION``, ``AWS_ENDPOINT_URL``), and
    then to the instance's role credentials, as the AWS SDKs do.
    """

    #: ``http(s)://host:port`` of a non-AWS server (MinIO, Ceph RGW, GCS's S3 API); empty: AWS.
    endpoint: str = ""
    region: str = ""
    access_key_id: str = ""
    secret_access_key: str = Field("", repr=False)
    session_token: str = Field("", repr=False)
    #: Allow a plain-http endpoint (a MinIO inside the cluster); off: https only.
    allow_http: bool = False
    #: Where downloaded model files are kept (checked by sha256 before they load).
    cache_dir: Path = Path(".genoserve/model-cache")


class RuntimeSettings(_Section):
    #: The model repository on local disk or a mounted volume (``runtime.model_repository``
    #: overrides it).
    model_dir: Path = Path("models")
    #: Where the model versions are: empty for ``model_dir``, a local path, or S3-compatible object
    #: storage ``s3://bucket/prefix`` (``store`` gives the endpoint and credentials); files are
    #: downloaded to ``store.cache_dir`` and sha256-checked before they load.
    model_repository: str = ""
    store: ModelStoreSettings = ModelStoreSettings()
    #: After Triton's model control modes. ``none``: what the repository holds at start is served
    #: until the process ends. ``poll``: the repository is re-read every ``poll_interval_s``; new
    #: versions load (and serve once checked and warmed up), removed ones unload. ``explicit``:
    #: ``Models/Load`` and ``Models/Unload`` (``genoserve models load|unload``) change what is
    #: served.
    model_control: Literal["none", "poll", "explicit"] = "none"
    poll_interval_s: float = Field(30.0, gt=0)
    #: An unloaded version lets requests that already hold it finish for up to this long.
    unload_timeout_s: float = Field(30.0, ge=0)
    #: Serve only these model names (empty: every model in ``model_dir``).
    models: tuple[str, ...] = ()
    #: Serve only models of these families (empty: every family). One Deployment per family
    #: scales each family apart (segmentation on big GPUs, binding on small ones).
    families: tuple[str, ...] = ()
    #: auto: CUDA when onnxruntime has the CUDA provider, else CPU.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    cuda_device_id: int = Field(0, ge=0)
    #: ONNX Runtime intra-op threads per session call (0: the model.yaml's ``cpu_serving`` for an
    #: online CPU session, else ONNX Runtime's default of one per core, capped at a container's
    #: CPU quota; ``genoserve.runtime.placement``).
    intra_op_threads: int = Field(0, ge=0)
    inter_op_threads: int = Field(0, ge=0)
    #: Let ONNX Runtime's idle threads spin. Off by default: the server's event loop shares the
    #: cores, and spinning threads steal them (measured: lower p99 and more requests/s without).
    allow_spinning: bool = False
    #: Rewrite each graph's first layer at load for less work, same results
    #: (``genoserve.runtime.prologue``): a leading log1p of an input (scVI's encoder:
    #: ``Log(Add(counts, 1))``) leaves the session, and the embedding family takes it in place on
    #: the dense counts it lays out anyway (CPU sessions only); a Gemm over a Concat of inputs
    #: becomes a Gemm per input.
    graph_rewrites: bool = True
    #: Concurrent session calls per model version (Triton's instance count). 0: the model.yaml's
    #: ``cpu_serving`` for a CPU session (the variants models: one single-threaded call per core),
    #: else 1.
    instances: int = Field(0, ge=0)
    #: glibc malloc keeps up to this many MiB of freed memory for reuse (server and worker
    #: processes), so large requests do not page-fault in fresh memory every time
    #: (``genoserve.core.memory``); 0: glibc's defaults.
    malloc_keep_mb: int = Field(512, ge=0)
    warmup: bool = True
    batching: BatchingSettings = BatchingSettings()


class JobsSettings(_Section):
    """Bulk jobs: broker, job store, allowed paths, retries and leases."""

    #: Celery broker. Empty: the embedded broker (kombu's filesystem transport under ``data_dir``),
    #: which needs no server process. ``redis://host:port/db`` for production.
    broker_url: str = ""
    #: Job store. Empty: Redis when the broker is Redis, else the embedded SQLite store under
    #: ``data_dir``. ``redis://...`` or ``sqlite:///path``.
    store_url: str = ""
    #: Embedded broker and store files, and shard staging for jobs whose output is elsewhere.
    data_dir: Path = Path(".genoserve")
    #: Job inputs and outputs must resolve (symlinks followed) under one of these.
    input_roots: tuple[Path, ...] = (Path("."),)
    output_roots: tuple[Path, ...] = (Path("."),)
    #: Tries per shard before the job FAILS naming the shard (poison shards stop here).
    max_attempts: int = Field(3, gt=0)
    #: A running shard that has not sent a heartbeat for this long is re-queued.
    shard_lease_s: float = Field(60.0, gt=0)
    #: How often the server looks for expired leases and stalled jobs.
    sweep_interval_s: float = Field(5.0, gt=0)
    #: Redis broker: a fetched but unacknowledged task is redelivered after this long. Must exceed
    #: the longest shard.
    visibility_timeout_s: float = Field(4 * 3600.0, gt=0)
    #: Most shards one job may have; a submit that would make more is INVALID_ARGUMENT (before
    #: anything is recorded or enqueued), asking for a larger shard_size.
    max_shards_per_job: int = Field(10_000, gt=0)
    #: A running shard reads its job's state at most this often (between batches) and stops
    #: when the job was cancelled or has failed.
    cancel_check_s: float = Field(1.0, gt=0)
    #: Server threads that run Jobs.Submit (input inspection), apart from those of other calls:
    #: slow submits wait for one of these and never hold up Get, Watch or the online services.
    submit_threads: int = Field(4, gt=0)

    @model_validator(mode="after")
    def _urls(self) -> JobsSettings:
        for name in ("broker_url", "store_url"):
            url = getattr(self, name)
            if url and not url.startswith(("redis://", "rediss://", "sqlite://", "filesystem://")):
                raise ValueError(f"jobs.{name} must be redis://, rediss://, sqlite:// or filesystem://")
        return self

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or "filesystem://"

    @property
    def resolved_store_url(self) -> str:
        if self.store_url:
            return self.store_url
        if self.broker_url.startswith(("redis://", "rediss://")):
            return self.broker_url
        return f"sqlite:///{(self.data_dir / 'jobs.sqlite3').resolve()}"


class WorkerSettings(_Section):
    """``genoserve worker``: which queues, how many processes, where its metrics go."""

    queues: tuple[str, ...] = ("platform", "binding", "variants", "segmentation", "embedding")
    #: Prefork processes (each loads its own ONNX Runtime sessions).
    concurrency: int = Field(1, gt=0)
    #: Prometheus /metrics port of the worker (multiprocess mode); 0 turns it off.
    metrics_port: int = Field(9096, ge=0, le=65535)
    #: prometheus-client multiprocess directory (emptied at worker start).
    metrics_dir: Path = Path(".genoserve/metrics")
    #: Rows (or items) per session call inside a shard.
    batch_size: int = Field(1024, gt=0)
    #: Model versions a worker process keeps loaded; the least recently used one beyond this is
    #: dropped (a shard running on it finishes first) and loaded again when a job needs it.
    max_loaded_models: int = Field(8, gt=0)


class BindingSettings(_Section):
    """Sequence binding: reference genomes for ScoreVariants and the VCF/BED job kinds, and the
    size of an online request (each stream message on its own)."""

    #: name -> FASTA (plain or bgzip, with .fai / .gzi beside it).
    references: dict[str, Path] = {}
    #: Used when a request names none (default: the only one, if exactly one is registered).
    default_reference: str = ""
    #: Most sequences per Predict request, variants per ScoreVariants request.
    max_sequences: int = Field(4096, gt=0)
    #: Most bases the model runs on per request, one strand: sequences x the model's input length
    #: (Predict), variants x 2 (ref, alt) x length (ScoreVariants), (1 + 3 x length) x length
    #: (Mutagenesis).
    max_bases: int = Field(4 * 1024 * 1024, gt=0)

    @model_validator(mode="after")
    def _default(self) -> BindingSettings:
        if self.default_reference and self.default_reference not in self.references:
            raise ValueError(f"binding.default_reference {self.default_reference!r} is not in binding.references")
        return self

    @property
    def resolved_default(self) -> str:
        if self.default_reference:
            return self.default_reference
        return next(iter(self.references)) if len(self.references) == 1 else ""


class SegmentationSettings(_Section):
    """Cell segmentation: request limits and how many tiles go to the model per call."""

    #: Largest image (H x W) a Segment request or a job image may have; a TIFF/PNG declaring a
    #: larger one is refused before it is decoded.
    max_pixels: int = Field(4096 * 4096, gt=0)
    #: Most pixels the network runs on for one Segment request: tiles x tile x tile, after
    #: rescaling for the request's diameter and padding to whole tiles. 0: 3 x max_pixels (room
    #: for any image within max_pixels whose sides are at least one tile, at its own scale, when
    #: max_pixels is at least two tiles).
    max_network_pixels: int = Field(0, ge=0)
    #: Tiles per model call (the dynamic batcher may merge calls of several requests).
    tile_batch: int = Field(8, gt=0)
    #: How flows are followed: numpy (vectorised, CPU), onnx (the flow-following ONNX graph in
    #: an ONNX Runtime session, on the GPU when runtime.device allows), auto (onnx when CUDA is
    #: available, else numpy).
    reconstruction: Literal["auto", "numpy", "onnx"] = "auto"
    #: Masks are reconstructed in blocks of this many pixels per side (plus a halo of context),
    #: so that the memory of reconstruction is bounded by the block, not by the image.
    reconstruction_block: int = Field(2048, ge=64)

    @property
    def resolved_max_network_pixels(self) -> int:
        return self.max_network_pixels or 3 * self.max_pixels


class VariantsSettings(_Section):
    """Variant calling: request limits."""

    #: Most alt alleles one example's site may have (its ``alts``, or a tf.Example's
    #: ``alternate_bases``); an example over it gets INVALID_ARGUMENT before any work. A site with
    #: n alts takes n(n+1)/2 examples and has (n+1)(n+2)/2 genotypes (PL values). Default 32 (see
    #: ``genoserve.variants.checks.MAX_ALTS_SOURCES`` for where the number comes from).
    max_alts_per_site: int = Field(32, gt=0)


class EmbeddingSettings(_Section):
    """Single-cell embedding: the size of an online request (each stream message on its own)."""

    #: Most cells (rows) per Embed request.
    max_cells: int = Field(16384, gt=0)
    #: Most values of the dense matrix a request is laid out as: cells x the model's genes
    #: (float32, 4 bytes each).
    max_dense_values: int = Field(16 * 1024 * 1024, gt=0)


class LoggingSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    json_format: bool = False


class Settings(_Section):
    server: ServerSettings = ServerSettings()
    runtime: RuntimeSettings = RuntimeSettings()
    jobs: JobsSettings = JobsSettings()
    worker: WorkerSettings = WorkerSettings()
    binding: BindingSettings = BindingSettings()
    segmentation: SegmentationSettings = SegmentationSettings()
    embedding: EmbeddingSettings = EmbeddingSettings()
    variants: VariantsSettings = VariantsSettings()
    logging: LoggingSettings = LoggingSettings()


def _set_path(target: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = target
    for key in path[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise SettingsError(f"setting {'.'.join(path)}: {key} is not a section")
        node = child
    node[path[-1]] = value


def _merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _env_value(raw: str) -> Any:
    """Lists and objects may be given as JSON; everything else stays a string for pydantic."""
    stripped = raw.strip()
    if stripped.startswith(("[", "{")):
        try:
            return json.loads(stripped)
        except json.JSONDecodeError:
            return raw
    return raw


def _env_layer(env: Mapping[str, str]) -> dict[str, Any]:
    layer: dict[str, Any] = {}
    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX) or name in ENV_META:
            continue
        if name in ENV_ALIASES:
            path = ENV_ALIASES[name]
        elif "__" in name:
            path = tuple(part.lower() for part in name[len(ENV_PREFIX) :].split("__"))
        else:
            continue  # another component's variable (e.g. jobs settings read by their own entry)
        _set_path(layer, path, _env_value(raw))
    return layer


def load_settings(
    config_file: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build the settings from a YAML file, an environment mapping and CLI overrides.

    ``overrides`` uses dotted keys (``{"server.port": 50052}``); ``None`` values are ignored so
    that unset CLI flags do not mask lower layers.
    """
    data: dict[str, Any] = {}
    if config_file is not None:
        try:
            loaded = yaml.safe_load(Path(config_file).read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise SettingsError(f"config file {config_file}: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise SettingsError(f"config file {config_file}: top level must be a mapping")
        data = loaded or {}
    data = _merge(data, _env_layer(env or {}))
    flat: dict[str, Any] = {}
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set_path(flat, tuple(dotted.split(".")), value)
    data = _merge(data, flat)
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors())
        raise SettingsError(f"invalid settings: {problems}") from exc
