"""Process resources: how many BLAS/OpenMP threads a run uses, and memory given back between stages.
May import: settings."""
