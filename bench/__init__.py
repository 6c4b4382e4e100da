"""Reproducible throughput benchmarks of the trainer against baselines (run on a GPU)."""
