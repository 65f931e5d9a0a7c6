"""Train one model: `python train.py [hydra overrides]`. One Hydra run = one W&B run.

Examples:
  python train.py                                   # default: d=5, tiny GPT-2, ~minutes on a CPU
  python train.py model=gpt2_small data.noise_std=0.5 training.learning_rate=3e-4
  python train.py -m data.noise_std=0,0.25,0.5      # Hydra multirun
  python train.py hydra.run.dir=outputs/<dir>       # resume a stopped run from its last checkpoint
"""

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from icl_lr.config import ConfigError, from_dictconfig
from icl_lr.run_dir import RunDirError, RunDirLock, open_run_dir, wandb_run_id

log = logging.getLogger("icl_lr")


@hydra.main(config_path="configs", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    try:
        run_cfg = from_dictconfig(cfg)
        with RunDirLock(run_dir):
            finished = open_run_dir(run_dir, run_cfg, run_dir / hydra_cfg.output_subdir)
            if finished:
                log.info(
                    "%s already finished at step %d (excess over Bayes %.4f); nothing to do. "
                    "Raise training.steps to extend it.",
                    run_dir,
                    finished["step"],
                    finished.get("eval/excess/mean", float("nan")),
                )
                return
            # Imported once Hydra has set up logging: orbax's first (absl) log line otherwise installs a second
            # root handler, which doubles every line of `--info`; `--help`, `--cfg` and `--info` skip JAX too.
            from icl_lr.tracking import WandbRun
            from icl_lr.train import train

            config = OmegaConf.to_container(cfg, resolve=True)
            wandb_run = WandbRun(run_cfg.wandb, config, run_dir, wandb_run_id(run_dir))
            train(run_cfg, run_dir, trackers=[wandb_run])
    except (ConfigError, RunDirError) as error:
        log.error("%s: %s", "config error" if isinstance(error, ConfigError) else "run dir error", error)
        sys.exit(2)


if __name__ == "__main__":
    main()
