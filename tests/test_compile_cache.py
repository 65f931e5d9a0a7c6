"""JAX's persistent compilation cache, on by default (training.compile_cache): where it lives, a second run of
the same shapes reading its programs, and the off switch."""

import os
import shutil

import jax

from helpers import no_key_env, train_cli
from icl_lr.train import parallel

SHORT = ["training.steps=10", "training.eval_every=10", "training.checkpoint_every=10", "wandb.mode=disabled"]


def user_env(tmp_path, **extra) -> dict:
    """A user's environment: no cache dir of the suite's (conftest.py), the XDG cache under tmp_path.
    The suite's minimum compile time of 0 stays: every program is cached, however fast this machine."""
    env = {k: v for k, v in no_key_env().items() if k != "JAX_COMPILATION_CACHE_DIR"}
    return env | {"XDG_CACHE_HOME": str(tmp_path / "xdg")} | extra


def entries(cache) -> set:
    return {p.name for p in cache.iterdir()} if cache.exists() else set()


def test_a_second_run_reads_every_program_from_the_default_dir_and_the_off_switch_leaves_none(tmp_path):
    """A second run of the same shapes reads every program from $XDG_CACHE_HOME/icl-lr/jax; the off switch
    (training.compile_cache=false) writes no cache, even where JAX_COMPILATION_CACHE_DIR names one."""
    cache = tmp_path / "xdg" / "icl-lr" / "jax"
    train_cli(tmp_path / "first", *SHORT, env=user_env(tmp_path))
    first = entries(cache)
    assert first  # the default dir holds the first run's programs
    second = train_cli(tmp_path / "second", *SHORT, env=user_env(tmp_path))
    assert "train step compiled" in second.stdout
    assert entries(cache) == first  # nothing compiled anew: a program missed would have been written
    shutil.rmtree(tmp_path / "xdg")
    env = user_env(tmp_path, JAX_COMPILATION_CACHE_DIR=str(tmp_path / "off"))
    train_cli(tmp_path / "run", *SHORT, "training.compile_cache=false", env=env)
    assert not (tmp_path / "off").exists() and not (tmp_path / "xdg").exists()


def test_a_cache_dir_of_the_users_own_is_kept(fast_config):
    """JAX_COMPILATION_CACHE_DIR, read by JAX as it starts (as the suite's, conftest.py): a run keeps it."""
    own = jax.config.jax_compilation_cache_dir
    assert own == os.environ["JAX_COMPILATION_CACHE_DIR"]
    parallel.use_compile_cache(fast_config())
    assert jax.config.jax_compilation_cache_dir == own
