"""The evaluation harness: planted-change generators, the known-change bound, and the signal, churn and outlier
evaluations that judge the product. The product never imports it. May import: anything but defs, api and cli."""
