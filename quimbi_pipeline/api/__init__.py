"""The read API and pages over the warehouse (`quimbi serve`): routes.py the one routing table, app.py the
application, reads.py queries, models.py response models, access.py API keys. May import: anything but defs and cli."""
