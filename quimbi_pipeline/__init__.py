"""quimbi_pipeline: daily, point-in-time customer behavioral profiles (README.md; each subpackage's __init__ says
what it holds and what it may import)."""

import os as _os

# OpenMP's threads (scikit-learn's KMeans) sleep while they wait instead of spinning: beside other work a spinning
# pool cost a 3,000-customer store 7.9x its quiet time, a passive one 2.0x (benchmarks/busy.py, docs/operations.md).
# OpenMP reads it once, when it loads: hence here, before any module of the package imports scikit-learn. A value
# already in the environment is left alone.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
