"""`genoserve models import torch` end to end: small PyTorch models defined here (random weights from
a seed), saved as TorchScript and as torch.export programs, imported by the CLI and served by a real
server and worker; served outputs (predict binding, Models/Infer, the binding.score_fasta and
platform.score_rows jobs) equal torch's on real DNA (hg19 chr20 windows from tests/data/deepvariant).

Needs the ``import`` extra (torch), which ``make setup`` installs: without it these tests fail.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pysam
import pytest
import torch
import yaml

from genoserve.client import Client
from genoserve.core.errors import InvalidArgument
from genoserve.core.settings import RuntimeSettings
from genoserve.importers.torch import import_torch
from genoserve.v1 import jobs_pb2
from tests.support.jobs import WorkerProcess, wait_for_job, write_config
from tests.support.server import REPO, ServerProcess

pytestmark = pytest.mark.integration

REFERENCE = REPO / "tests" / "data" / "deepvariant" / "ucsc.hg19.chr20.unittest.fasta.gz"
LENGTH = 101
TASKS = ["site_a", "site_b", "site_c"]
#: The acceptance figure: served output vs torch's, max abs.
TOLERANCE = 1e-4


class BindingCNN(torch.nn.Module):
    """One-hot DNA float32 [batch, 101, 4] -> logits float32 [batch, 3]: DeepBind's shape of model
    (convolution, ReLU, max over positions, linear)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv1d(4, 16, kernel_size=9)
        self.head = torch.nn.Linear(16, len(TASKS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x.transpose(1, 2))).amax(dim=2))


class NoisyCNN(BindingCNN):
    """Adds uniform noise to the logits: no graph can agree with it twice."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = super().forward(x)
        return logits + torch.rand_like(logits)


class PlatformMLP(torch.nn.Module):
    """float32 [batch, 16] -> float32 [batch, 4]."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def seeded(cls: type[torch.nn.Module], seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return cls().eval()


def save_export(module: torch.nn.Module, example: torch.Tensor, path: Path, dynamic_batch: bool = True) -> Path:
    shapes = ({0: torch.export.Dim("batch")},) if dynamic_batch else None
    torch.export.save(torch.export.export(module, (example,), dynamic_shapes=shapes), str(path))
    return path


def real_windows(n: int = 24) -> list[tuple[str, str]]:
    """``n`` windows of 101 bp of hg19 chr20, upper case: the first straddles the start of the
    sequenced part (50 N, then bases), the others start every 997 bp from 10,000,000."""
    with pysam.FastaFile(str(REFERENCE)) as fasta:
        starts = [9_994_950] + [10_000_000 + 997 * i for i in range(n - 1)]
        return [(f"chr20_{s}", fasta.fetch("chr20", s, s + LENGTH).upper()) for s in starts]


def one_hot(sequence: str) -> np.ndarray:
    """float32 [len, 4], A C G T columns; N is 0.25 in each, as genoserve.binding.encoding encodes it."""
    out = np.full((len(sequence), 4), 0.25, np.float32)
    for i, base in enumerate(sequence):
        if base in "ACGT":
            out[i] = np.eye(4, dtype=np.float32)["ACGT".index(base)]
    return out


def dinucleotide_frequencies(sequence: str) -> np.ndarray:
    """float32 [16]: the frequency of each of the 16 dinucleotides (AA, AC, ..., TT)."""
    counts = np.zeros(16, np.float32)
    for a, b in itertools.pairwise(sequence):
        if a in "ACGT" and b in "ACGT":
            counts["ACGT".index(a) * 4 + "ACGT".index(b)] += 1
    return counts / max(1.0, counts.sum())


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "genoserve.cli.main", *args], capture_output=True, text=True,
                          timeout=180, cwd=REPO)  # fmt: skip


@dataclass
class Rig:
    root: Path
    server: ServerProcess
    worker: WorkerProcess
    cnn: torch.nn.Module
    mlp: torch.nn.Module
    windows: list[tuple[str, str]]
    stdout: dict[str, str]


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    root = tmp_path_factory.mktemp("import-torch")
    models = root / "models"
    cnn, mlp = seeded(BindingCNN), seeded(PlatformMLP, 1)
    example = torch.from_numpy(np.stack([one_hot(s) for _, s in real_windows(3)[1:]]))
    torch.jit.save(torch.jit.script(cnn), str(root / "cnn.pt"))
    save_export(cnn, example, root / "cnn.pt2")
    save_export(mlp, torch.zeros(2, 16), root / "mlp.pt2")
    tasks = ",".join(TASKS)
    imports = {
        "cnn-script": ["cnn.pt", "--family", "binding", "--length", str(LENGTH), "--tasks", tasks],
        "cnn-export": ["cnn.pt2", "--family", "binding", "--tasks", tasks, "--default-strand", "forward"],
        "mlp-export": ["mlp.pt2", "--family", "platform", "--output-name", "scores"],
    }
    stdout = {}
    for name, (file, *options) in imports.items():
        result = cli("models", "import", "torch", str(root / file), "--name", name, "--model-dir", str(models),
                     *options)  # fmt: skip
        assert result.returncode == 0, (name, result.stderr)
        stdout[name] = result.stdout
    # A program exported at a fixed batch size of 2: torch runs it in pairs, the graph takes any batch.
    save_export(cnn, example, root / "cnn-static.pt2", dynamic_batch=False)
    import_torch(root / "cnn-static.pt2", models, "cnn-static", RuntimeSettings(), "binding", tasks=TASKS)
    # The importer's default port names (x -> y): the ones platform.score_rows runs.
    import_torch(root / "mlp.pt2", models, "mlp-rows", RuntimeSettings(), "platform")
    config = write_config(root)  # the worker reads the same model directory as the server
    config.write_text(yaml.safe_dump({**yaml.safe_load(config.read_text()), "runtime": {"model_dir": str(models)}}))
    worker = WorkerProcess(config, root / "worker.log", "--queues", "binding,platform").start()
    server = ServerProcess("--config", str(config), model_dir=models, log_path=root / "server.log").start()
    yield Rig(root, server, worker, cnn, mlp, real_windows(), stdout)
    server.terminate()
    worker.stop()


def torch_logits(rig: Rig) -> np.ndarray:
    """torch's logits [windows, tasks] of the seeded CNN on the rig's windows."""
    with torch.no_grad():
        return rig.cnn(torch.from_numpy(np.stack([one_hot(s) for _, s in rig.windows]))).numpy()


def test_import_writes_the_binding_contract(rig: Rig) -> None:
    spec = yaml.safe_load((rig.root / "models" / "cnn-script" / "model.yaml").read_text())
    assert spec["family"] == "binding"
    assert spec["inputs"] == [{"name": "x", "dtype": "float32", "shape": [-1, LENGTH, 4]}]
    assert spec["outputs"] == [{"name": "logit", "dtype": "float32", "shape": [-1, 3], "labels": TASKS}]
    assert spec["preprocessing"] == {"sequence_length": LENGTH, "default_strand": "max"}
    exported = yaml.safe_load((rig.root / "models" / "cnn-export" / "model.yaml").read_text())
    assert exported["inputs"][0]["shape"] == [-1, LENGTH, 4]  # the length read from the program
    assert exported["preprocessing"]["default_strand"] == "forward"
    assert "torchscript: input x [batch, 101, 4], outputs ['logit']" in rig.stdout["cnn-script"]
    assert "torch.export: input x [batch, 16], outputs ['scores']" in rig.stdout["mlp-export"]


@pytest.mark.parametrize("model", ["cnn-script", "cnn-export", "cnn-static"])
def test_predict_binding_equals_torch_sigmoid(rig: Rig, model: str) -> None:
    """The acceptance check: `genoserve predict binding --strand forward` on real chr20 windows
    gives torch's sigmoid(logit) (and logit) within 1e-4."""
    fasta = rig.root / "windows.fa"
    fasta.write_text("".join(f">{name}\n{sequence}\n" for name, sequence in rig.windows))
    result = cli("predict", "binding", "--model", model, "--fasta", str(fasta), "--strand", "forward",
                 "--address", rig.server.address)  # fmt: skip
    assert result.returncode == 0, result.stderr
    header, *rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert header == ["id", *[f"{t}_{k}" for t in TASKS for k in ("score", "logit")]]
    assert [row[0] for row in rows] == [name for name, _ in rig.windows]
    served = np.array([[float(v) for v in row[1:]] for row in rows])
    logits = torch_logits(rig)
    score_diff = float(np.abs(served[:, 0::2] - 1.0 / (1.0 + np.exp(-logits))).max())
    logit_diff = float(np.abs(served[:, 1::2] - logits).max())
    print(f"{model}: served vs torch: sigmoid max abs {score_diff:.3g}, logit max abs {logit_diff:.3g}")
    assert score_diff <= TOLERANCE
    assert logit_diff <= TOLERANCE
    assert logits.std() > 0.01  # the windows score differently: a real comparison
    assert rig.windows[0][1].count("N") == 50  # and N is encoded as the family does


def test_platform_infer_equals_torch(rig: Rig) -> None:
    features = np.stack([dinucleotide_frequencies(s) for _, s in rig.windows])
    with Client(rig.server.address) as client:
        served = client.infer("mlp-export", {"x": features})
    with torch.no_grad():
        expected = rig.mlp(torch.from_numpy(features)).numpy()
    diff = float(np.abs(served["scores"] - expected).max())
    print(f"mlp-export: served vs torch: max abs {diff:.3g}")
    assert diff <= TOLERANCE


def test_jobs_run_the_imported_models_as_torch_does(rig: Rig) -> None:
    """The bulk path: binding.score_fasta with the imported CNN (its default strand, forward) and
    platform.score_rows with the imported MLP (default port names), sharded and run by a worker,
    give torch's outputs."""
    fasta = rig.root / "job-windows.fa"
    fasta.write_text("".join(f">{name}\n{sequence}\n" for name, sequence in rig.windows))
    features = np.stack([dinucleotide_frequencies(s) for _, s in rig.windows])
    np.save(rig.root / "features.npy", features)
    with Client(rig.server.address) as client:
        jobs = [
            client.submit_job("binding.score_fasta", [str(fasta)], str(rig.root / "fasta-out"),
                              {"model": "cnn-export", "shard_size": "10"}),
            client.submit_job("platform.score_rows", [str(rig.root / "features.npy")], str(rig.root / "rows-out"),
                              {"model": "mlp-rows", "shard_size": "10"}),
        ]  # fmt: skip
        done = [wait_for_job(client, job.id, timeout=180) for job in jobs]
    for job in done:
        assert job.state == jobs_pb2.JOB_STATE_SUCCEEDED, (job.kind, job.error, rig.worker.log())
        assert job.shards_total == 3
    table = pq.read_table(rig.root / "fasta-out" / "job-windows.binding.parquet").to_pydict()
    assert table["id"] == [name for name, _ in rig.windows]
    logits = torch_logits(rig)
    served = np.array([table[f"{task}_logit"] for task in TASKS]).T
    scores = np.array([table[f"{task}_score"] for task in TASKS]).T
    with torch.no_grad():
        expected_rows = rig.mlp(torch.from_numpy(features)).numpy()
    rows_diff = float(np.abs(np.load(rig.root / "rows-out" / "features.scores.npy") - expected_rows).max())
    print(f"jobs vs torch: score_fasta logit max abs {np.abs(served - logits).max():.3g}, "
          f"score_rows max abs {rows_diff:.3g}")  # fmt: skip
    assert float(np.abs(served - logits).max()) <= TOLERANCE
    assert float(np.abs(scores - 1.0 / (1.0 + np.exp(-logits))).max()) <= TOLERANCE
    assert rows_diff <= TOLERANCE


def test_refused_imports_name_the_problem_and_write_nothing(rig: Rig, tmp_path: Path) -> None:
    models = tmp_path / "models"
    noisy = torch.jit.trace(seeded(NoisyCNN), torch.zeros(2, LENGTH, 4), check_trace=False)
    torch.jit.save(noisy, str(tmp_path / "noisy.pt"))
    with pytest.raises(InvalidArgument, match=r"with torch: output logit .* \(tolerance 0.0001\); nothing written"):
        import_torch(tmp_path / "noisy.pt", models, "noisy", RuntimeSettings(), "binding", length=LENGTH)
    with pytest.raises(InvalidArgument, match="give the input length"):
        import_torch(rig.root / "cnn.pt", models, "a", RuntimeSettings(), "binding")
    with pytest.raises(InvalidArgument, match=r"2 task names for an output of 3 columns"):
        import_torch(rig.root / "cnn.pt2", models, "b", RuntimeSettings(), "binding", tasks=["x", "y"])
    with pytest.raises(InvalidArgument, match=r"is 50 but the program takes sequences of 101"):
        import_torch(rig.root / "cnn.pt2", models, "c", RuntimeSettings(), "binding", length=50)
    with pytest.raises(InvalidArgument, match=r"a binding model takes one-hot DNA \[batch, length, 4\]"):
        import_torch(rig.root / "mlp.pt2", models, "d", RuntimeSettings(), "binding")
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(InvalidArgument, match="neither a TorchScript file"):
        import_torch(tmp_path / "junk.pt", models, "e", RuntimeSettings(), "platform", input_shape=(16,))
    assert not models.exists() or not any(models.iterdir())
    # A new version shares the model.yaml: other task names are refused, the same ones accepted.
    with pytest.raises(InvalidArgument, match=r"differs from this import in \['logit labels'\]"):
        import_torch(rig.root / "cnn.pt2", rig.root / "models", "cnn-export", RuntimeSettings(), "binding",
                     tasks=["p", "q", "r"], default_strand="forward")  # fmt: skip
    assert not (rig.root / "models" / "cnn-export" / "2").exists()
