"""JAX's persistent compilation cache, on by default (training.compile_cache): where it lives, a second run of
the same shapes reading its programs, and the off switch."""

import shutil

from helpers import no_key_env, train_cli

SHORT = ["training.steps=10", "training.eval_every=10", "training.checkpoint_every=10", "wandb.mode=disabled"]


def user_env(tmp_path, **extra) -> dict:
    """A user's environment: no cache dir of the suite's (conftest.py), the XDG cache under tmp_path.
    The suite's minimum compile time of 0 stays: every program is cached, however fast this machine."""
    env = {k: v for k, v in no_key_env().items() if k != "JAX_COMPILATION_CACHE_DIR"}
    return env | {"XDG_CACHE_HOME": str(tmp_path / "xdg")} | extra


def entries(cache) -> set:
    return {p.name for p in cache.iterdir()} if cache.exists() else set()


def test_the_cache_is_read_where_it_lives_and_the_off_switch_leaves_none(tmp_path):
    """A second run of the same shapes reads every program from the default dir; a cache dir of the user's own
    (JAX_COMPILATION_CACHE_DIR, here a copy of the default one) is read instead of it; the off switch
    (training.compile_cache=false) writes none."""
    cache = tmp_path / "xdg" / "icl-lr" / "jax"
    train_cli(tmp_path / "first", *SHORT, env=user_env(tmp_path))
    first = entries(cache)
    assert first  # the default dir, $XDG_CACHE_HOME/icl-lr/jax, holds the first run's programs
    second = train_cli(tmp_path / "second", *SHORT, env=user_env(tmp_path))
    assert "train step compiled" in second.stdout
    assert entries(cache) == first  # nothing compiled anew: a program missed would have been written
    own = shutil.copytree(cache, tmp_path / "own")
    shutil.rmtree(tmp_path / "xdg")
    train_cli(tmp_path / "kept", *SHORT, env=user_env(tmp_path, JAX_COMPILATION_CACHE_DIR=str(own)))
    assert entries(own) >= first and not (tmp_path / "xdg").exists()  # the user's dir, not the default
    env = user_env(tmp_path, JAX_COMPILATION_CACHE_DIR=str(tmp_path / "off"))
    train_cli(tmp_path / "run", *SHORT, "training.compile_cache=false", env=env)
    assert not (tmp_path / "off").exists() and not (tmp_path / "xdg").exists()
