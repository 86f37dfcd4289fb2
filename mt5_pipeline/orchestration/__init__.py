"""The Dagster shell: assets, checks, jobs, sensors, schedules and resources, each in
its own module and each thin over the domain core. `mt5_pipeline.definitions` joins them into `defs`.

(Named `orchestration`, not `defs`, because the package attribute `mt5_pipeline.defs`
is the Definitions object itself.)"""
