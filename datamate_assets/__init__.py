"""DataMate's Dagster wiring. `DatasetComponent` (a dg component type) and `dataset_definitions` are its API:

    from datamate_assets import DatasetComponent, dataset_definitions
"""

__all__ = ["DatasetComponent", "dataset_definitions"]


def __getattr__(name: str):
    # Imported on first use: the `datamate` CLI lives in this package and must start without importing Dagster.
    if name in __all__:
        from datamate_assets import component

        return getattr(component, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])  # dg's registry lists a module's components with dir()
