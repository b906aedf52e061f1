import dagster as dg

from datamate_assets.spec import DatasetSpec


def key(spec: DatasetSpec | str, stage: str) -> dg.AssetKey:
    """`<dataset>/<stage>`: one asset group per dataset, so lineage reads per dataset in the UI."""
    name = spec if isinstance(spec, str) else spec.name
    return dg.AssetKey([name, stage])
