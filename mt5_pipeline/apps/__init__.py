"""The launchers and the reference EA: what wires the domain core to processes.

`cli` (the `mt5-pipeline` command), `demo`, `devserver` (`make dev`), `servers` (uvicorn
in a thread), `ea_sim` (the reference EA, a Starlette app of its own), and the
long-running workers: `workers` (run until SIGTERM/SIGINT, N spawned processes), used by
`push_worker` (`mt5-pipeline push`) and `live_worker` (`mt5-pipeline live`). They sit on top
of both shells -- the Dagster layer and the API -- and nothing in the domain core imports
them (mt5_pipeline_tests/system/test_architecture.py keeps it so).
"""
