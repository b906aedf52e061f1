"""Hostile inputs through the real collection stage (`dg.materialize` on a temporary storage dir).

Good records are collected, each bad input or record is in `collection_rejects` with a reason and a detail
naming the file and record, counts add up, nothing outside the source folder is read, and memory stays within a
generous ceiling measured in a child process.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from datamate_assets.spec import load_specs
from datamate_resources import tables
from datamate_resources.storage import ObjectStore
from tests.conftest import REPO
from tests.reliability.collect import collect, collected_metadata
from tests.reliability.hostile import (
    write_corpus,
    write_docx_bomb,
    write_large_document,
    write_million_line_jsonl,
)

MB = 1024 * 1024


def write_spec(datasets: Path, name: str, folder: Path, extra: str = "") -> Path:
    datasets.mkdir(parents=True, exist_ok=True)
    path = datasets / f"{name}.yaml"
    path.write_text(f"name: {name}\nsources:\n  - {{type: folder, path: {json.dumps(str(folder))}{extra}}}\n")
    return path


def input_of(uri: str, uris: dict[str, str]) -> str:
    """The corpus input a collected or rejected source_uri belongs to (records carry '#line=N')."""
    for name, input_uri in sorted(uris.items(), key=lambda item: len(item[1]), reverse=True):
        if uri == input_uri or uri.startswith(input_uri + "#"):
            return name
    raise AssertionError(f"{uri} belongs to no input of the corpus")


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    corpus = write_corpus(root)
    spec = write_spec(root / "datasets", "hostile", corpus.source)
    result, collected, rejects = collect(spec, root / "storage")
    return corpus, result, collected, rejects


def test_run_succeeds_and_counts_add_up(hostile_run):
    corpus, result, collected, rejects = hostile_run
    assert result.success, [str(e) for e in result.all_events if e.is_failure]
    metadata = collected_metadata(result, "hostile")
    assert metadata["inputs"] == collected.num_rows + rejects.num_rows
    assert (collected.num_rows, rejects.num_rows) == (corpus.documents, corpus.rejects)


def test_each_input_gives_its_documents_and_rejects_with_reasons(hostile_run):
    corpus, result, collected, rejects = hostile_run
    if collected is None or rejects is None:
        pytest.fail("the collection stage wrote no output")
    documents: dict[str, list[str]] = {name: [] for name in corpus.expected}
    reasons: dict[str, list[str]] = {name: [] for name in corpus.expected}
    uris = {name: (corpus.source / name).as_uri() for name in corpus.expected}
    for row in collected.to_pylist():
        documents[input_of(row["source_uri"], uris)].append(row["text"])
    for row in rejects.to_pylist():
        reasons[input_of(row["source_uri"], uris)].append(row["reason"])
        assert row["detail"], row
    problems = []
    for name, expected in corpus.expected.items():
        if len(documents[name]) != expected.documents or sorted(reasons[name]) != sorted(expected.rejects):
            problems.append(f"{name!r}: {len(documents[name])} documents, rejects {sorted(reasons[name])}; "
                            f"expected {expected.documents} documents, rejects {sorted(expected.rejects)}")
        for text in expected.texts:
            if not any(text in document for document in documents[name]):
                problems.append(f"{name!r}: no collected text contains {text!r}")
    assert not problems, "\n".join(problems)


def test_record_rejects_name_file_record_and_field(hostile_run):
    corpus, _, _, rejects = hostile_run
    by_uri = {row["source_uri"]: row for row in rejects.to_pylist()}
    records = (corpus.source / "records.jsonl").as_uri()
    assert by_uri[f"{records}#line=2"]["detail"].startswith("line 2: invalid JSON")
    assert "no field 'text'" in by_uri[f"{records}#line=4"]["detail"]
    assert "field 'text' is int" in by_uri[f"{records}#line=6"]["detail"]
    csv = (corpus.source / "ragged.csv").as_uri()
    assert "more fields than the 3 columns" in by_uri[f"{csv}#line=3"]["detail"]


def test_nothing_outside_the_source_folder_is_read_or_written(hostile_run, tmp_path_factory):
    corpus, _, collected, _ = hostile_run
    texts = "\n".join(collected.column("text").to_pylist())
    assert "outside the source folder" not in texts
    assert "root:x:0:0" not in texts  # /etc/passwd through a link
    root = corpus.source.parent
    assert not list(root.rglob("escaped.txt")) and not Path("/etc/evil.txt").exists()
    assert all(uri.startswith(corpus.source.as_uri()) for uri in collected.column("source_uri").to_pylist())


def test_a_file_name_that_is_not_utf8_is_collected_without_failing_the_run(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    # Linux allows any bytes in a name; Python sees a lone surrogate, which Parquet cannot store.
    (source / os.fsdecode(b"latin1-name-\xe9.txt")).write_text("A file whose name is not valid UTF-8.")
    (source / "plain.txt").write_text("A file with a plain name.")
    result, collected, rejects = collect(write_spec(tmp_path / "datasets", "names", source), tmp_path / "storage")
    assert result.success, [str(e.event_specific_data.error) for e in result.all_events if e.is_step_failure]
    assert collected.num_rows + rejects.num_rows == 2
    assert "A file with a plain name." in collected.column("text").to_pylist()


def test_glob_patterns_that_climb_out_of_the_source_are_refused(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    spec = write_spec(tmp_path / "datasets", "climb", source, ', include: ["../**/*"]')
    result, _, _ = collect(spec, tmp_path / "storage")
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "must be relative and stay inside the source root" in str(failure.event_specific_data.error)


def test_spec_with_every_kind_of_mistake_reports_each_with_file_and_field(tmp_path):
    datasets = tmp_path / "datasets"
    datasets.mkdir()
    (datasets / "good.yaml").write_text("name: good\nsources: [{type: folder, path: /tmp}]\n")
    (datasets / "broken.yaml").write_text(textwrap.dedent("""\
        name: Bad-Name
        colour: blue
        sources:
          - {type: folder}
          - {type: ftp, url: ftp://x}
          - {type: s3, url: http://not-s3/}
          - {type: web, urls: [https://a.example/], timeout_seconds: -1}
        cleaning:
          process:
            - {clean_html_mapper: {}, text_length_filter: {}}
            - no_such_mapper: {}
            - text_length_filter: {min_lenght: 3}
        index: {chunk_size: 0, chunk_overlap: -5}
        synthesis: {kinds: [poems], per_chunk: 100}
        """))
    (datasets / "not_yaml.yaml").write_text("name: [unclosed\n")
    (datasets / "a_list.yaml").write_text("- just\n- a list\n")
    (datasets / "zz_dupe.yaml").write_text("name: good\nsources: [{type: folder, path: /tmp}]\n")
    specs, errors = load_specs(datasets)
    assert [s.name for s in specs] == ["good"]
    found = {(e.file.name, e.field) for e in errors}
    expected = {
        ("broken.yaml", "name"), ("broken.yaml", "colour"), ("broken.yaml", "sources[0].folder.path"),
        ("broken.yaml", "sources[1]"), ("broken.yaml", "sources[2].s3.url"),
        ("broken.yaml", "sources[3].web.timeout_seconds"), ("broken.yaml", "cleaning.process"),
        ("broken.yaml", "index.chunk_size"), ("broken.yaml", "index.chunk_overlap"),
        ("broken.yaml", "synthesis.kinds[0]"), ("broken.yaml", "synthesis.per_chunk"),
        ("not_yaml.yaml", ""), ("a_list.yaml", ""), ("zz_dupe.yaml", "name"),
    }
    assert expected <= found, sorted(expected - found)
    assert all(e.reason for e in errors)


def test_spec_names_unknown_operators_and_parameters_in_its_recipe(tmp_path):
    """A recipe mistake is a spec mistake: `datamate validate` must name the step, not the first run."""
    datasets = tmp_path / "datasets"
    datasets.mkdir()
    (datasets / "recipe.yaml").write_text(textwrap.dedent("""\
        name: recipe
        sources: [{type: folder, path: /tmp}]
        cleaning:
          process:
            - no_such_mapper: {}
            - text_length_filter: {min_lenght: 3}
        """))
    specs, errors = load_specs(datasets)
    found = {(e.file.name, e.field) for e in errors}
    assert {("recipe.yaml", "cleaning.process[0]"), ("recipe.yaml", "cleaning.process[1]")} <= found, errors


# --- memory: measured in a child process, against a generous ceiling --------------------------------------
def run_child(spec: Path, storage: Path) -> dict:
    completed = subprocess.run(
        [sys.executable, "-m", "tests.reliability.collect", str(spec), str(storage)],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def baseline_rss(tmp_path_factory) -> float:
    """Peak RSS of collecting one small file: the interpreter, Dagster and the readers."""
    root = tmp_path_factory.mktemp("baseline")
    (root / "source").mkdir()
    (root / "source" / "one.txt").write_text("One small document.")
    return run_child(write_spec(root / "datasets", "baseline", root / "source"), root / "storage")["peak_rss_mb"]


def test_a_200_mb_document_is_set_aside_without_being_read(tmp_path, baseline_rss):
    source = tmp_path / "source"
    source.mkdir()
    write_large_document(source / "huge.txt")
    (source / "small.txt").write_text("A small document next to a huge one.")
    report = run_child(write_spec(tmp_path / "datasets", "huge", source), tmp_path / "storage")
    assert report["success"] and (report["collected"], report["rejected"]) == (1, 1)
    assert report["reasons"] == ["oversized"]
    assert report["peak_rss_mb"] < baseline_rss + 100, report  # far below the file's 200 MB


def test_a_docx_that_inflates_to_300_mb_stays_within_memory_bounds(tmp_path, baseline_rss):
    source = tmp_path / "source"
    source.mkdir()
    write_docx_bomb(source / "bomb.docx")
    assert (source / "bomb.docx").stat().st_size < 5 * MB  # well under max_bytes: the size check cannot help
    report = run_child(write_spec(tmp_path / "datasets", "bomb", source), tmp_path / "storage")
    assert report["success"], report
    # Reading the inflated XML whole needs several times 300 MB; a bounded reader rejects it as oversized.
    assert report["peak_rss_mb"] < baseline_rss + 300, report


@pytest.mark.timeout(900)
def test_a_jsonl_with_broken_lines_is_streamed_with_memory_proportional_to_the_output(tmp_path, baseline_rss):
    """200 000 lines here (the million-line run is `bench/soak.py`): same code path, same per-record ceiling."""
    source = tmp_path / "source"
    source.mkdir()
    good, broken = write_million_line_jsonl(source / "records.jsonl", lines=200_000, broken_every=1000)
    storage = tmp_path / "storage"
    report = run_child(write_spec(tmp_path / "datasets", "lines", source), storage)
    assert report["success"]
    assert (report["collected"], report["rejected"], report["inputs"]) == (good, broken, good + broken)
    assert report["reasons"] == ["parse_error"]
    table = tables.read_stage(ObjectStore(url=f"file://{storage}"), "lines", "collected")
    # Generous: four times the in-memory size of the output table itself.
    assert report["peak_rss_mb"] < baseline_rss + 4 * table.nbytes / MB, (report, table.nbytes / MB)
