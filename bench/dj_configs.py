"""Data-Juicer's published text configs, unchanged, on a sample: `python -m bench.dj_configs CONFIGS [--docs 300]`.

CONFIGS is the `configs/` folder of a Data-Juicer checkout. Every config in its recipe folders
(`data_juicer_recipes/`, `reproduced_redpajama/`, `reproduced_bloom/`, `demo/`; not the sandbox ones) whose
`process:` list has no image, video or audio operator is loaded as `datamate clean --config` loads it, with
`dataset_path` pointed at a sample of the synthetic web corpus (bench/corpus.py), and run by the local
executor. Model files come from the tiny test models (tests/language_models.py) in English and Chinese.
Prints one line per config (ran / failed and why) and the count.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

FOLDERS = ("data_juicer_recipes", "reproduced_redpajama", "reproduced_bloom", "demo")
MEDIA = ("image", "img", "video", "audio")  # imgdiff_*: image operators too


def text_configs(configs: Path) -> list[Path]:
    import yaml

    found = []
    for folder in FOLDERS:
        for path in sorted((configs / folder).rglob("*.yaml")):
            if "sandbox" in path.relative_to(configs).parts:
                continue
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            process = raw.get("process") if isinstance(raw, dict) else None
            if not isinstance(process, list):
                continue
            names = [next(iter(step)) if isinstance(step, dict) else str(step) for step in process]
            if not any(kind in name for name in names for kind in MEDIA):
                found.append(path)
    return found


def sample(docs: int, folder: Path) -> Path:
    from bench.corpus import generate

    path = folder / "sample.jsonl"
    with path.open("w", encoding="utf-8") as out:
        for row in generate(docs, seed=0).table.select(["doc_id", "text"]).to_pylist():
            out.write(json.dumps({**row, "meta": {"suffix": ".md"}}) + "\n")
    return path


def run_one(path: Path, data: Path, work: Path) -> tuple[bool, str]:
    from operators.dj_config import load_config, read_dataset
    from operators.recipe import run_local

    try:
        config = load_config(path, {"dataset_path": data, "export_path": work / f"{path.stem}.jsonl", "np": 1})
        result = run_local(config.recipe, read_dataset(data, config.suffixes))
    except Exception as error:  # noqa: BLE001 - the point is to list every failure and go on
        return False, f"{type(error).__name__}: {' '.join(str(error).split())[:300]}"
    return True, f"{len(config.recipe.operators)} operators, {result.kept.num_rows} kept"


def main(argv: list[str] | None = None) -> int:
    from tests.language_models import build_models

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", type=Path, help="The configs/ folder of a Data-Juicer checkout")
    parser.add_argument("--docs", type=int, default=300)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="dj-configs-") as tmp:
        work = Path(tmp)
        for lang in ("en", "zh"):
            build_models(work / "models", lang)
        os.environ["DATAMATE_MODELS_DIR"] = str(work / "models")
        data = sample(args.docs, work)
        paths = text_configs(args.configs)
        ran = 0
        for path in paths:
            ok, detail = run_one(path, data, work)
            ran += ok
            print(f"{'ran   ' if ok else 'FAILED'} {path.relative_to(args.configs)}: {detail}", flush=True)
    print(f"{ran} of {len(paths)} text configs ran unchanged on {args.docs} documents")
    return 0


if __name__ == "__main__":
    sys.exit(main())
