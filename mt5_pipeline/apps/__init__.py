"""The launchers and the reference EA: what wires the domain core to processes.

`cli` (the `mt5-pipeline` command), `demo`, `devserver` (`make dev`), `servers` (uvicorn
in a thread) and `ea_sim` (the reference EA, a Starlette app of its own). They sit on top
of both shells -- the Dagster layer and the API -- and nothing in the domain core imports
them (mt5_pipeline_tests/system/test_architecture.py keeps it so).
"""
