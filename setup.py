"""mt5-pipeline: MetaTrader 5 candles -> features -> RandomForest signals -> the EA, orchestrated by Dagster."""

import re
from pathlib import Path

from setuptools import find_namespace_packages, setup

# dagster, dagster-webserver and dagster-postgres are released in lock-step: each
# dagster-postgres requires its exact dagster, and unpinned pip can fall back to an
# ancient dagster-postgres. Keep the three pins moving together.
DAGSTER = "1.13.27"
DAGSTER_LIBS = "0.29.27"

setup(
    name="mt5-pipeline",
    # One version string: mt5_pipeline/__init__.py (read as text: installing must not import the package).
    version=re.search(
        r'__version__ = "([^"]+)"', (Path(__file__).parent / "mt5_pipeline" / "__init__.py").read_text()
    ).group(1),
    description="MetaTrader 5 market data to ML trade signals, delivered safely to an Expert Advisor",
    long_description=open("README.md", encoding="utf-8").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    license="MIT",  # the LICENSE file
    license_files=["LICENSE"],
    python_requires=">=3.10",
    # Namespace discovery: the alembic directories (storage/migrations, its versions/)
    # have no __init__.py but hold modules the program runs (`db upgrade` imports
    # env.py and each version), so they must ship as packages. mt5_pipeline_tests is
    # not part of the program. The Starlette shell installs as mt5_pipeline.api: no
    # top-level `api` package (api/ holds only the seed's script, shipped below).
    packages=find_namespace_packages(include=["mt5_pipeline", "mt5_pipeline.*"], exclude=["*.__pycache__"]),
    package_data={"mt5_pipeline.storage.migrations": ["script.py.mako"]},
    install_requires=[
        f"dagster=={DAGSTER}",
        f"dagster-webserver=={DAGSTER}",
        f"dagster-postgres=={DAGSTER_LIBS}",
        "pandas>=2.2",
        "numpy>=1.26",
        "scikit-learn>=1.5",
        "scipy>=1.11",  # lfilter for the exponential averages (also a scikit-learn dependency)
        "joblib>=1.4",
        "sqlalchemy>=2.0.30",
        "alembic>=1.13",
        "psycopg2-binary>=2.9.9",
        # psycopg 3 sits beside psycopg2 (the declared driver) for the pusher's
        # LISTEN/NOTIFY wake-up, whose notifies() generator takes a timeout.
        "psycopg[binary]>=3.2",
        "httpx>=0.27,<1.0",  # ea_client builds its pool on httpcore under httpx's transport
        "starlette>=0.40",
        "pydantic>=2.10,<3",  # the API's request and response models (PlainValidator's json_schema_input_type)
        "uvicorn>=0.30",
        "prometheus-client>=0.20",
        "python-dotenv>=1.0",
        "tqdm>=4.66",
        "matplotlib>=3.8",
    ],
    extras_require={
        # The official package is a Windows-only wheel: `pip install .[mt5]` on the
        # terminal's machine; elsewhere the extra installs nothing and the bridge runs --fake.
        "mt5": ['MetaTrader5>=5.0.45; platform_system=="Windows"'],
        # Each Dagster run (backfills, retraining) in its own container: docker/dagster-docker.yaml.
        "docker": ["dagster-docker>=0.29,<0.30"],
        # Each run as a Kubernetes Job: docs/scaling.md.
        "k8s": ["dagster-k8s>=0.29,<0.30"],
        "dev": [
            "pytest>=8",
            "pytest-timeout>=2.3",
            "hypothesis>=6.100",
            "schemathesis>=3.30",
            "ta>=0.11",
            "PyYAML>=6",
            "ruff>=0.5",
            # `make lint` type-checks the package; the pandas stubs make frames checkable.
            "mypy>=1.10",
            "pandas-stubs>=2.2",
            "types-tqdm",  # the CSV importer's progress bar
            # test_scaling validates docker/dagster-docker.yaml against the launcher's own schema.
            "dagster-docker>=0.29,<0.30",
        ],
        # Benchmarks only: its test data (EURUSD H1, 2017-2018) is the real market in
        # benchmarks/bench_real.py; nothing in the pipeline imports it.
        "bench": ["backtesting>=0.6"],
    },
    entry_points={"console_scripts": ["mt5-pipeline=mt5_pipeline.apps.cli:main"]},
    # The seed's worker script ships too, so `run_ea_pusher.py` works from an installed wheel
    # as `python api/run_ea_pusher.py` does from a checkout.
    scripts=["api/run_ea_pusher.py"],
)
