"""The user's guide and docs/: short README, no lab-notebook wording, links that resolve, model cards
whose metrics are model.yaml's, and a benchmarks page that is the report's output."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.bench import report

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
DOCS = REPO / "docs"
MODELS = REPO / "models"
MAX_README_LINES = 350

#: Wording of a lab notebook, not of a user's guide: work sessions, issue numbers, "ad hoc".
NOTEBOOK_WORDING = re.compile(
    r"\bsessions?\s+#?\d+|\bad[\s-]?hoc\b|\bissues?\s+#?\d+|#\d+\s+issue|\(issue\s+\d+\)", re.IGNORECASE
)
#: A markdown link or image: [text](target) / ![alt](target).
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def pages() -> list[Path]:
    """The pages a user or maintainer reads: the README, docs/, the deployment guide and the data
    sets' provenance notes."""
    return [
        README,
        *sorted(DOCS.rglob("*.md")),
        REPO / "deploy" / "README.md",
        *sorted(REPO.glob("tests/data/*/README.md")),
    ]


def model_dirs() -> list[Path]:
    return sorted(p for p in MODELS.iterdir() if (p / "model.yaml").is_file())


def recorded_metrics(model_dir: Path) -> dict[str, str]:
    """Every version's metrics, values as written in model.yaml (YAML scalars' source text)."""
    root = yaml.compose((model_dir / "model.yaml").read_text())
    assert isinstance(root, yaml.MappingNode)
    top = {key.value: value for key, value in root.value}
    metrics: dict[str, str] = {}
    for version in top["versions"].value:
        fields = {key.value: value for key, value in version.value}
        if "metrics" in fields:
            metrics.update({key.value: value.value for key, value in fields["metrics"].value})
    return metrics


def test_readme_is_a_guide_of_at_most_350_lines() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines; move reference material to docs/"


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(REPO)))
def test_no_session_issue_or_ad_hoc_wording(page: Path) -> None:
    found = [
        f"line {n}: {m.group(0)!r}"
        for n, line in enumerate(page.read_text().splitlines(), 1)
        for m in NOTEBOOK_WORDING.finditer(line)
    ]
    assert not found, f"{page.relative_to(REPO)}: {found}"


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves_to_a_file_in_the_repository(page: Path) -> None:
    broken = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL (https:, mailto:) or an anchor in the same page
        path = (page.parent / target.split("#", 1)[0]).resolve()
        if not path.is_relative_to(REPO) or not path.exists():
            broken.append(target)
    assert not broken, f"{page.relative_to(REPO)}: links that resolve to nothing in the repository: {broken}"


@pytest.mark.parametrize("model_dir", model_dirs(), ids=lambda p: p.name)
def test_every_model_has_a_card_with_every_metric_as_recorded(model_dir: Path) -> None:
    card = DOCS / "models" / f"{model_dir.name}.md"
    assert card.is_file(), f"models/{model_dir.name} has no model card at docs/models/{model_dir.name}.md"
    text = card.read_text()
    metrics = recorded_metrics(model_dir)
    assert metrics, f"models/{model_dir.name}/model.yaml records no metrics"
    missing = [
        f"{name}: {value}"
        for name, value in metrics.items()
        if not re.search(rf"^\|\s*`?{re.escape(name)}`?\s*\|\s*{re.escape(value)}\s*\|", text, re.MULTILINE)
    ]
    assert not missing, f"{card.relative_to(REPO)}: metrics not in a table row as model.yaml records them: {missing}"


def test_readme_lists_every_model_with_a_link_to_its_card_and_metrics_as_recorded() -> None:
    rows = [line for line in README.read_text().splitlines() if "](docs/models/" in line]
    for model_dir in model_dirs():
        name = model_dir.name
        [row] = [r for r in rows if f"](docs/models/{name}.md)" in r] or [""]
        assert row, f"README.md has no line linking docs/models/{name}.md"
        metrics = recorded_metrics(model_dir)
        quoted = re.findall(r"`([A-Za-z0-9_]+)`\s+([-+0-9.e]+)", row)
        assert quoted, f"README.md's line for {name} quotes no metric (`name` value)"
        wrong = [(key, value) for key, value in quoted if metrics.get(key) != value]
        assert not wrong, f"README.md's line for {name}: {wrong} differ from model.yaml ({metrics})"


def test_benchmarks_page_is_the_reports_output(tmp_path: Path) -> None:
    """Rendering with no result files keeps every section: the committed page is what the report
    writes (edit the report or rerun the benchmarks, not the page)."""
    page = (DOCS / "benchmarks.md").read_text()
    rendered, origin = report.render(tmp_path, page)
    assert rendered == page
    assert set(origin) == {bench.name for bench in report.BENCHES}


@pytest.mark.parametrize("bench", [b.name for b in report.BENCHES])
def test_every_benchmark_section_was_written_by_the_report_from_a_run(bench: str) -> None:
    """Each section carries the report's lines for one recorded run (date, machine, command): no
    figures typed in by hand, no benchmark left without figures."""
    body = report.sections_of((DOCS / "benchmarks.md").read_text())[bench]
    assert "No figures recorded yet" not in body, f"{bench}: never run (make bench)"
    assert "recorded by hand" not in body, f"{bench}: figures typed in by hand, not the report's"
    assert re.search(r"^- Measured: \d{4}-\d\d-\d\dT", body, re.MULTILINE), f"{bench}: no run date"
    assert re.search(r"^- Machine: \d+ CPUs, ", body, re.MULTILINE), f"{bench}: no machine"
    assert re.search(r"^- Command: `python -m tests\.bench\.", body, re.MULTILINE), f"{bench}: no command"
