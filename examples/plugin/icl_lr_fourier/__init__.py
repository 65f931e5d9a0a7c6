"""Fourier-series regression (a task) and a causal DeepSets trunk (a model family) for icl-lr."""
