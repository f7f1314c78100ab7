"""The torch side: what a launched job does. experiment (the run lifecycle: lock, skip, data,
models, train, records), engine (the one training loop for S >= 1 copies) and its checkpoints,
probes (diagnostics, ics, smoothness), models and their stacked form (stacking), data, and
devices. Only jobs import this package; the launching side never does."""
