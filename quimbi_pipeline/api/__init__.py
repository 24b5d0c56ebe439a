"""The read API and pages over the warehouse (`quimbi serve`): app.py routes, reads.py queries, models.py
response models, access.py API keys."""
