"""`datamate migrate`: legacy `datasets/*.yaml` spec files become component folders (`<defs>/<name>/defs.yaml`)
that give the same datasets, with their comments, never overwriting, and a dry run that changes nothing."""

import textwrap
from pathlib import Path

import pytest
import yaml

from datamate_assets.cli import main
from datamate_assets.cli.project import find_project, load_datasets

SPEC = textwrap.dedent("""\
    # Our product documentation.
    name: mydocs
    description: >-
      Manuals and release notes,
      folded over two lines.
    sources:
      # The export of the wiki, next to the datasets folder.
      - type: folder
        path: data/mydocs
        include: ["**/*.md"]   # only Markdown
    cleaning:
      config: recipes/dj.yaml  # a Data-Juicer config, relative to this file
    index: {chunk_size: 400, chunk_overlap: 40}
    """)


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """A dg project with one legacy spec file, its folder source and its Data-Juicer config."""
    root = tmp_path / "proj"
    (root / "proj" / "defs").mkdir(parents=True)
    (root / "pyproject.toml").write_text('[project]\nname = "proj"\nversion = "0"\n\n[tool.dg]\n'
                                         'directory_type = "project"\n\n[tool.dg.project]\nroot_module = "proj"\n')
    (root / "data" / "mydocs").mkdir(parents=True)
    (root / "data" / "mydocs" / "guide.md").write_text("# Guide\n\nInstall packages with apt.")
    (root / "datasets" / "recipes").mkdir(parents=True)
    (root / "datasets" / "recipes" / "dj.yaml").write_text("process:\n  - text_length_filter: {min_len: 10}\n")
    (root / "datasets" / "mydocs.yaml").write_text(SPEC)
    for name in ("DATAMATE_HOME", "DATAMATE_DATASETS_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(root)
    return root


def datasets(root: Path):
    specs, errors = load_datasets(find_project(cwd=root))
    assert not errors, [str(e) for e in errors]
    return {spec.name: spec for spec in specs}


def test_a_spec_file_becomes_a_component_folder_with_its_comments(project, capsys):
    before = datasets(project)["mydocs"]
    assert main(["migrate"]) == 0
    target = project / "proj" / "defs" / "mydocs" / "defs.yaml"
    text = target.read_text()
    assert "comments not kept" not in capsys.readouterr().out
    assert "type: datamate_assets.DatasetComponent" in text
    for comment in ("# Our product documentation.", "# The export of the wiki", "# only Markdown"):
        assert comment in text
    # Relative to the spec file before, to the component's folder now.
    assert yaml.safe_load(text)["attributes"]["cleaning"]["config"] == "../../../datasets/recipes/dj.yaml"
    assert not (project / "datasets" / "mydocs.yaml").exists()
    assert (project / "datasets" / "mydocs.yaml.migrated").read_text() == SPEC

    after = datasets(project)["mydocs"]  # loaded from the defs folder only: no duplicate
    assert after.spec_path == target
    assert after.model_dump(exclude={"sources", "cleaning"}) == before.model_dump(exclude={"sources", "cleaning"})
    assert Path(after.sources[0].path) == (project / "data" / "mydocs").resolve()
    assert after.sources[0].include == ["**/*.md"]
    assert (target.parent / after.cleaning.config).resolve() == (project / "datasets" / "recipes" / "dj.yaml")


def test_dry_run_changes_nothing(project, capsys):
    assert main(["migrate", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would write" in out and "# The export of the wiki" in out
    assert not (project / "proj" / "defs" / "mydocs").exists()
    assert (project / "datasets" / "mydocs.yaml").read_text() == SPEC


def test_it_refuses_to_overwrite_and_writes_nothing(project, capsys):
    (project / "datasets" / "other.yaml").write_text("name: other\nsources: [{type: folder, path: data/mydocs}]\n")
    existing = project / "proj" / "defs" / "mydocs" / "defs.yaml"
    existing.parent.mkdir()
    existing.write_text("# mine\n")
    assert main(["migrate"]) == 1
    err = capsys.readouterr().err
    assert "refusing to overwrite" in err and str(existing) in err
    assert existing.read_text() == "# mine\n"
    assert not (project / "proj" / "defs" / "other").exists()  # all or nothing
    assert (project / "datasets" / "mydocs.yaml").exists() and (project / "datasets" / "other.yaml").exists()


def test_a_spec_the_indentation_cannot_carry_is_written_by_the_yaml_library(project, capsys):
    # Spec files kept in legacy/specs/: their folders are relative to legacy/, the component's to the project
    # root. A path that occurs twice cannot be rewritten in place: the spec is dumped, comments lost, same data.
    spec_dir = project / "legacy" / "specs"
    spec_dir.mkdir(parents=True)
    (spec_dir / "twice.yaml").write_text("# gone\nname: twice\nsources:\n  - {type: folder, path: docs}\n"
                                         "  - {type: folder, path: docs, include: ['*.txt']}\n")
    (project / "legacy" / "docs").mkdir()
    assert main(["migrate", "--from", str(spec_dir)]) == 0
    assert "comments not kept" in capsys.readouterr().out
    target = project / "proj" / "defs" / "twice" / "defs.yaml"
    raw = yaml.safe_load(target.read_text())["attributes"]
    assert [s["path"] for s in raw["sources"]] == ["legacy/docs", "legacy/docs"]
    spec = datasets(project)["twice"]
    assert Path(spec.sources[1].path) == (project / "legacy" / "docs").resolve()


def test_broken_spec_files_are_named(project, capsys):
    (project / "datasets" / "bad.yaml").write_text("name: [unclosed\n")
    assert main(["migrate"]) == 1
    assert "bad.yaml: cannot be read as YAML" in capsys.readouterr().err
    assert not (project / "proj" / "defs" / "mydocs").exists()
