"""`genoserve models import torch`: a TorchScript or ``torch.export`` file -> a binding or platform model.

The file is loaded with torch itself (``torch.jit.load`` for ``torch.jit.save`` files,
``torch.export.load`` for ``torch.export.save`` ones, usually ``.pt2``), exported to ONNX with
``torch.onnx.export`` (the TorchScript-based exporter, ``dynamo=False``: the dynamo one needs
onnxscript, which the ``import`` extra does not install) with a dynamic batch dimension, and run
on made-up inputs by both torch and ONNX Runtime (one-hot DNA for a binding model, about 5% N
encoded 0.25 in each channel as ``genoserve.binding.encoding`` does; standard normal values for a
platform model) at batch sizes other than the export's as well as at it. Any output
further than ``TOLERANCE`` (max abs) from torch's refuses the import; otherwise the model goes
through ``genoserve.runtime.authoring.add_version`` (the server's checks and a warm-up run).

What a file must be:

- one float32 input; binding: [batch, length, 4] one-hot A, C, G, T (N 0.25 each), the length
  fixed; platform: [batch, ...] with every size after the batch fixed;
- binding: one output, float32 [batch, tasks] logits (genoserve applies the sigmoid);
  platform: a tensor or a tuple of tensors, each [batch, ...];
- a ``torch.export`` program exported with a fixed batch size is run by torch in groups of that
  size (what its guards accept); the ONNX graph must still take any batch size.

The helpers ``export_onnx`` and ``add_onnx`` are shared with the other importers.
"""

from __future__ import annotations

import io
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import onnxruntime as ort
import torch
import yaml

from genoserve.core.errors import InvalidArgument
from genoserve.core.settings import RuntimeSettings
from genoserve.runtime.authoring import NewModel, VersionCheck, add_version
from genoserve.runtime.registry import MODEL_FILE

Array = np.ndarray[Any, Any]
Family = Literal["binding", "platform"]

#: Largest max-abs difference between ONNX Runtime's and torch's outputs that an import accepts.
TOLERANCE = 1e-4
#: Batch size of the example the graph is exported with (unless the program fixes another).
EXAMPLE_BATCH = 2
#: Batch sizes the ONNX graph is checked at, besides the example's: a graph that kept the
#: example's batch size as a constant fails or disagrees at these.
CHECK_BATCHES = (1, 7)
OPSET = 17
#: Fraction of positions made N (0.25 in each channel) in the made-up binding inputs.
N_FRACTION = 0.05


@dataclass(frozen=True)
class Program:
    """A torch program loaded from a file, called like the model.

    ``item_shape``: the input's sizes after the batch dimension when the file states them
    (``torch.export``; -1 where the program leaves a size dynamic), None for TorchScript.
    ``fixed_batch``: the batch size a ``torch.export`` program was exported at, when fixed.
    """

    module: torch.nn.Module
    format: Literal["torchscript", "torch.export"]
    item_shape: tuple[int, ...] | None = None
    fixed_batch: int | None = None


def _load_export(path: Path) -> Program:
    program = torch.export.load(str(path))
    user_inputs = set(program.graph_signature.user_inputs)
    placeholders = [n for n in program.graph.nodes if n.op == "placeholder" and n.name in user_inputs]
    if len(placeholders) != 1 or not isinstance(placeholders[0].meta.get("val"), torch.Tensor):
        raise InvalidArgument.field("file", f"{path}: the program takes {len(placeholders)} inputs; "
                                    "the importer takes models with one tensor input")  # fmt: skip
    value = placeholders[0].meta["val"]
    if value.dtype != torch.float32:
        raise InvalidArgument.field("file", f"{path}: the input is {value.dtype}; the importer takes float32 inputs")
    dims = [d if isinstance(d, int) else -1 for d in value.shape]
    if not dims:
        raise InvalidArgument.field("file", f"{path}: the input is a scalar; it needs a batch dimension")
    # The unlifted module refuses .train()/.eval(), which torch.onnx.export calls: a plain
    # GraphModule over the same graph and weights runs the same code (its guards included).
    unlifted = program.module()
    module = torch.fx.GraphModule(unlifted, unlifted.graph)
    return Program(module, "torch.export", tuple(dims[1:]), dims[0] if dims[0] > 0 else None)


def load_program(path: Path) -> Program:
    """The TorchScript module or ``torch.export`` program in ``path`` (tried in the order its
    suffix suggests); INVALID_ARGUMENT when torch reads it as neither."""
    if not path.is_file():
        raise InvalidArgument.field("file", f"{path} is not a file")
    if not zipfile.is_zipfile(path):
        raise InvalidArgument.field("file", f"{path} is neither a TorchScript file (torch.jit.save) nor a "
                                    "torch.export program (torch.export.save): not a zip archive")  # fmt: skip
    errors: list[str] = []
    loaders: list[Callable[[], Program]] = [
        lambda: Program(torch.jit.load(str(path), map_location="cpu").eval(), "torchscript"),  # type: ignore[no-untyped-call]
        lambda: _load_export(path),
    ]
    if path.suffix == ".pt2":
        loaders.reverse()
    for load in loaders:
        try:
            return load()
        except InvalidArgument:
            raise
        except Exception as exc:  # torch raises RuntimeError, ValueError, zipfile errors, ...
            errors.append(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300])
    raise InvalidArgument.field("file", f"{path} is neither a TorchScript file (torch.jit.save) nor a "
                                f"torch.export program (torch.export.save): {'; '.join(errors)}")  # fmt: skip


def _as_arrays(result: Any) -> list[Array]:
    values = list(result) if isinstance(result, tuple | list) else [result]
    if not values or not all(isinstance(v, torch.Tensor) for v in values):
        raise InvalidArgument.field("file", "the model must return a tensor or a tuple of tensors")
    return [v.detach().cpu().numpy() for v in values]


def run_torch(program: Program, x: Array) -> list[Array]:
    """The program's outputs on ``x`` (float32 [batch, ...]); a program with a fixed batch size
    runs in groups of that size, the last one padded with copies of its first row."""
    step = program.fixed_batch or len(x)
    parts: list[list[Array]] = []
    with torch.no_grad():
        for start in range(0, len(x), step):
            chunk = x[start : start + step]
            padded = np.concatenate([chunk, np.repeat(chunk[:1], step - len(chunk), axis=0)])
            parts.append([out[: len(chunk)] for out in _as_arrays(program.module(torch.from_numpy(padded)))])
    return [np.concatenate(column) for column in zip(*parts, strict=True)]


def export_onnx(module: torch.nn.Module, example: Sequence[torch.Tensor], input_names: Sequence[str],
                output_names: Sequence[str]) -> bytes:  # fmt: skip
    """``module`` as ONNX (opset 17, every input and output's first dimension dynamic), checked
    by ``onnx.checker``; INVALID_ARGUMENT with the exporter's message when it cannot export."""
    buffer = io.BytesIO()
    axes = {name: {0: "batch"} for name in [*input_names, *output_names]}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer and deprecation warnings: the checks below decide
            torch.onnx.export(
                module, tuple(example), buffer,  # type: ignore[arg-type]
                input_names=list(input_names), output_names=list(output_names),
                dynamic_axes=axes, opset_version=OPSET, dynamo=False,
            )  # fmt: skip
        model = onnx.load_from_string(buffer.getvalue())
        model.producer_name = "genoserve"
        onnx.checker.check_model(model)
    except Exception as exc:  # the exporter raises many kinds (unsupported operators above all)
        raise InvalidArgument.field("file", f"torch.onnx.export failed: {type(exc).__name__}: {exc}"[:1000]) from exc
    return bytes(model.SerializeToString())


def max_abs_diff(got: Array, want: Array) -> float:
    """Largest |got - want|; NaN where only one side is NaN counts as infinite."""
    diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
    both_nan = np.isnan(got) & np.isnan(want)
    diff[both_nan] = 0.0
    diff[np.isnan(diff)] = np.inf
    return float(diff.max()) if diff.size else 0.0


def _check_existing(repository: Path, name: str, new: NewModel) -> None:
    """A new version shares its model's model.yaml: refuse one whose labels or preprocessing
    differ from it (genes in another order would otherwise be matched to the wrong columns)."""
    path = repository / name / MODEL_FILE
    if not path.is_file():
        return
    spec = yaml.safe_load(path.read_text()) or {}
    labels = {p.get("name"): list(p.get("labels") or []) for p in [*spec.get("inputs", []), *spec.get("outputs", [])]}
    differ = [f"{port} labels" for port, names in new.labels.items() if labels.get(port) != list(names)]
    written = spec.get("preprocessing") or {}
    differ += [f"preprocessing.{key}" for key, value in new.preprocessing.items() if written.get(key) != value]
    if differ:
        raise InvalidArgument.field("name", f"{name} is already in {repository} and its model.yaml (shared by "
                                    f"every version) differs from this import in {differ}: import it under "
                                    "another name")  # fmt: skip


def add_onnx(repository: Path, name: str, graph: bytes, settings: RuntimeSettings, new: NewModel) -> VersionCheck:
    """``graph`` written as the next version of ``name`` through ``add_version`` (the server's
    checks and a warm-up run before anything is written); a model already in ``repository``
    must have the same labels and preprocessing."""
    _check_existing(repository, name, new)
    with tempfile.TemporaryDirectory(prefix="genoserve-import-") as folder:
        path = Path(folder) / "model.onnx"
        path.write_bytes(graph)
        return add_version(repository, name, path, settings, new)


def one_hot_dna(batch: int, length: int, rng: np.random.Generator) -> Array:
    """float32 [batch, length, 4]: random bases one-hot in ACGT order, about 5% N (0.25 each)."""
    x = np.eye(4, dtype=np.float32)[rng.integers(0, 4, size=(batch, length))]
    x[rng.random((batch, length)) < N_FRACTION] = 0.25
    return x


def _item_shape(family: Family, program: Program, length: int | None, input_shape: tuple[int, ...] | None
                ) -> tuple[int, ...]:  # fmt: skip
    stated = program.item_shape
    if family == "binding":
        if input_shape is not None:
            raise InvalidArgument.field("input_shape", "a binding model's input is [batch, length, 4]: give --length")
        if stated is not None and (len(stated) != 2 or stated[1] != 4):
            raise InvalidArgument.field("file", f"a binding model takes one-hot DNA [batch, length, 4]; "
                                        f"this program takes [batch, {', '.join(map(str, stated))}]")  # fmt: skip
        known = stated[0] if stated is not None and stated[0] > 0 else None
        if length is not None and known is not None and length != known:
            raise InvalidArgument.field("length", f"is {length} but the program takes sequences of {known}")
        length = length or known
        if length is None:
            raise InvalidArgument.field("length", "give the input length (--length): the file does not fix it")
        return (length, 4)
    if length is not None:
        raise InvalidArgument.field("length", "is for binding models; a platform model's input is --input-shape")
    if input_shape is not None and stated is not None and len(stated) == len(input_shape):
        wrong = [f"{g} (program: {s})" for g, s in zip(input_shape, stated, strict=True) if s > 0 and s != g]
        if wrong:
            raise InvalidArgument.field("input_shape", f"disagrees with the program: {', '.join(wrong)}")
    shape = input_shape if input_shape is not None else stated
    if shape is None or any(d < 1 for d in shape):
        raise InvalidArgument.field("input_shape", "give the input's sizes after the batch (--input-shape), "
                                    "each fixed: the file does not fix them")  # fmt: skip
    return shape


@dataclass(frozen=True)
class TorchImport:
    """What an import wrote: the version, the format read, the input's shape after the batch,
    the output names and the largest ONNX vs torch difference seen."""

    check: VersionCheck
    format: str
    item_shape: tuple[int, ...]
    output_names: tuple[str, ...]
    max_abs_diff: float


def import_torch(
    path: Path, repository: Path, name: str, settings: RuntimeSettings, family: Family, *,
    length: int | None = None, input_shape: tuple[int, ...] | None = None, tasks: Sequence[str] = (),
    input_name: str = "x", output_names: Sequence[str] = (), default_strand: str = "max", description: str = "",
    seed: int = 0,
) -> TorchImport:  # fmt: skip
    """Convert ``path`` to ONNX, check it against torch, and add it as the next version of
    ``name``; INVALID_ARGUMENT naming what is wrong otherwise (nothing is written)."""
    program = load_program(path)
    item = _item_shape(family, program, length, input_shape)
    rng = np.random.default_rng(seed)

    def made_up(batch: int) -> Array:
        if family == "binding":
            return one_hot_dna(batch, item[0], rng)
        return rng.standard_normal((batch, *item)).astype(np.float32)

    example = made_up(program.fixed_batch or EXAMPLE_BATCH)
    try:
        outputs = run_torch(program, example)
    except InvalidArgument:
        raise
    except Exception as exc:
        raise InvalidArgument.field("file", f"torch fails on an input of shape {list(example.shape)}: "
                                    f"{type(exc).__name__}: {exc}"[:1000]) from exc  # fmt: skip
    if output_names:
        names = list(output_names)
    elif len(outputs) == 1:
        names = ["logit" if family == "binding" else "y"]
    else:
        names = [f"y{i}" for i in range(len(outputs))]
    if len(names) != len(outputs):
        raise InvalidArgument.field("output_name", f"{len(names)} names for the model's {len(outputs)} outputs")
    if input_name in names or len(set(names)) != len(names):
        raise InvalidArgument.field("output_name", f"input and output names must be distinct, got {input_name!r} "
                                    f"and {names}")  # fmt: skip
    if family == "binding" and (len(outputs) != 1 or outputs[0].ndim != 2 or outputs[0].dtype != np.float32):
        shapes = [f"{o.dtype} {list(o.shape)}" for o in outputs]
        raise InvalidArgument.field("file", f"a binding model returns one float32 [batch, tasks] tensor of logits; "
                                    f"this one returns {shapes}")  # fmt: skip
    width = outputs[0].shape[-1] if outputs[0].ndim > 1 else 0
    if tasks and len(tasks) != width:
        raise InvalidArgument.field("tasks", f"{len(tasks)} task names for an output of {width} columns "
                                    f"({names[0]} is {list(outputs[0].shape)})")  # fmt: skip
    graph = export_onnx(program.module, [torch.from_numpy(example)], [input_name], names)
    try:
        session = ort.InferenceSession(graph, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise InvalidArgument.field("file", f"ONNX Runtime cannot load the exported graph: {exc}"[:1000]) from exc
    worst = 0.0
    for batch in (len(example), *CHECK_BATCHES):
        x = example if batch == len(example) else made_up(batch)
        want = run_torch(program, x)
        try:
            got = session.run(names, {input_name: x})
        except Exception as exc:
            raise InvalidArgument.field("file", f"the exported graph fails at batch size {batch} (a size fixed "
                                        f"when exported?): {exc}"[:1000]) from exc  # fmt: skip
        for out_name, g, w in zip(names, got, want, strict=True):
            if g.shape != w.shape:
                raise InvalidArgument.field("file", f"output {out_name} at batch size {batch}: ONNX gives "
                                            f"{list(g.shape)}, torch {list(w.shape)}")  # fmt: skip
            diff = max_abs_diff(g, w)
            if not diff <= TOLERANCE:
                raise InvalidArgument.field("file", f"the ONNX graph disagrees with torch: output {out_name} at "
                                            f"batch size {batch} differs by up to {diff:.3g} (tolerance "
                                            f"{TOLERANCE:g}); nothing written")  # fmt: skip
            worst = max(worst, diff)
    labels = {names[0]: list(tasks)} if tasks else {}
    preprocessing: dict[str, Any] = {}
    if family == "binding":
        preprocessing = {"sequence_length": item[0], "default_strand": default_strand}
    text = description or (f"{program.format} file {path.name} imported by genoserve models import torch "
                           f"(torch {torch.__version__}); ONNX vs torch max abs diff {worst:.2g}")  # fmt: skip
    check = add_onnx(repository, name, graph, settings, NewModel(family, labels, preprocessing, text))
    return TorchImport(check, program.format, item, tuple(names), worst)
