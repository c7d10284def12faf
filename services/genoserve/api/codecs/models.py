"""Model repository status -> genoserve.v1.ModelInfo."""

from __future__ import annotations

import json

from genoserve.api.codecs.tensor import dtype_to_proto
from genoserve.runtime.live import IndexEntry, ModelStatus
from genoserve.runtime.registry import ModelState
from genoserve.runtime.spec import TensorSpec
from genoserve.v1 import models_pb2, tensor_pb2

_STATE = {
    ModelState.LOADING: models_pb2.MODEL_STATE_LOADING,
    ModelState.READY: models_pb2.MODEL_STATE_READY,
    ModelState.FAILED: models_pb2.MODEL_STATE_FAILED,
    ModelState.UNLOADING: models_pb2.MODEL_STATE_UNLOADING,
}


def tensor_spec(spec: TensorSpec) -> tensor_pb2.TensorSpec:
    return tensor_pb2.TensorSpec(
        name=spec.name,
        dtype=dtype_to_proto(spec.dtype),
        shape=list(spec.shape),
        labels=list(spec.labels),
        description=spec.description,
    )


def model_info(status: ModelStatus) -> models_pb2.ModelInfo:
    info = models_pb2.ModelInfo(
        name=status.name,
        version=status.version,
        ready=status.ready,
        state=_STATE[status.state],
        reason=status.reason,
        provider=status.provider,
        batching=models_pb2.BatchingConfig(
            max_batch_size=status.batching.max_batch_size,
            max_queue_delay_us=status.batching.max_queue_delay_us,
            max_queue_size=status.batching.max_queue_size,
            instances=status.batching.instances,
        ),
    )
    spec = status.spec
    if spec is not None:
        info.family = spec.family
        info.description = spec.description
        info.inputs.extend(tensor_spec(t) for t in spec.inputs)
        info.outputs.extend(tensor_spec(t) for t in spec.outputs)
        info.preprocessing.update(
            {key: value if isinstance(value, str) else json.dumps(value) for key, value in spec.preprocessing.items()}
        )
        if status.version:
            version = spec.version(int(status.version))
            info.sha256 = version.sha256
            info.metrics.update(version.metrics)
            info.provenance.update(version.provenance)
    return info


def index_entry(entry: IndexEntry) -> models_pb2.RepositoryIndexResponse.Entry:
    state = _STATE[entry.state] if entry.state is not None else models_pb2.MODEL_STATE_UNAVAILABLE
    return models_pb2.RepositoryIndexResponse.Entry(
        name=entry.name, version=entry.version, state=state, reason=entry.reason
    )
