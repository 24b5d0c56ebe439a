"""A store's customers at a date: features (with change points), segments and fuzzy memberships, archetypes, churn
and LTV, outlier flags. Pure pandas/numpy/scikit-learn. May import: settings, runtime, sources, history."""
