"""The configs, a package so that an installed icl-lr finds them (icl_lr/configs links here)."""
