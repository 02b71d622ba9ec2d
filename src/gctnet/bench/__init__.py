"""Benchmarks and cost accounting (layer, model, FLOP/param/memory)."""
