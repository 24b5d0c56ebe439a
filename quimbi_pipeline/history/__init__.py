"""How profiles are kept over time: the snapshot calendar and retention policy, profile JSON as text, and a snapshot's
numbers as value arrays and columnar blocks (the form the model writes and drift reads). Pure.
May import: settings, runtime, sources."""
