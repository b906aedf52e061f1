"""The code location of the run-kill test (`test_run_retry.py`): every dataset in DATAMATE_DATASETS_DIR with its
stage assets and resources exactly as `datamate_assets.definitions` builds them, and its `<dataset>_pipeline`
job, but without the dbt reports and the automation sensors (they would start runs of their own while the test
watches one run).

Steps run in the run worker's process (in-process executor): with the default multiprocess executor every step
would be one more process importing the code location (~20 s each on the shared CI cores).
"""

import dagster as dg

from datamate_assets.spec import SpecFileError, load_specs
from datamate_resources import build_resources
from datamate_resources.settings import Settings
from tests.reliability.faults import stage_assets

settings = Settings.from_env()
specs, errors = load_specs(settings.datasets_dir)  # (datamate_assets.definitions would also load the dbt project)
if errors:
    raise SpecFileError(errors)

defs = dg.Definitions(
    assets=[asset for spec in specs for asset in stage_assets(spec)],
    jobs=[dg.define_asset_job(f"{spec.name}_pipeline", selection=dg.AssetSelection.groups(spec.name))
          for spec in specs],
    resources=build_resources(settings),
    executor=dg.in_process_executor,
)
