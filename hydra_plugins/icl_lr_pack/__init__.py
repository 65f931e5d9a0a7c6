"""icl-lr's Hydra launcher `hydra/launcher=pack` (configs/hydra/launcher/pack.yaml): a multirun's jobs of one
shape trained as packs (Hydra finds launchers only in the hydra_plugins namespace)."""
