"""`datamate validate`: check every dataset spec and report each mistake with file, field and reason."""

from datamate_assets.spec import load_specs
from datamate_resources.settings import Settings


def register(subparsers) -> None:
    parser = subparsers.add_parser("validate", help="Validate the dataset specs under DATAMATE_DATASETS_DIR")
    parser.set_defaults(func=run)


def run(args) -> int:
    settings = Settings.from_env()
    specs, errors = load_specs(settings.datasets_dir)
    for spec in specs:
        print(f"ok     {spec.spec_path}: dataset '{spec.name}', {len(spec.sources)} source(s)")
    for error in errors:
        print(f"error  {error}")
    return 1 if errors else 0
