"""The Starlette shell: routes over the mt5_pipeline core."""
