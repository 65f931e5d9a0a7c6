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


@hydra.main(config_path="configs", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        run_cfg = from_dictconfig(cfg)
    except ConfigError as error:
        logging.getLogger("icl_lr").error("config error: %s", error)
        sys.exit(2)
    # Imported once Hydra has set up logging: orbax's first (absl) log line otherwise installs a second root
    # handler, which doubles every line of `--info`; `--help`, `--cfg` and `--info` also skip loading JAX.
    from icl_lr.tracking import WandbRun
    from icl_lr.train import train

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    wandb_run = WandbRun(run_cfg.wandb, OmegaConf.to_container(cfg, resolve=True), run_dir)
    train(run_cfg, run_dir, trackers=[wandb_run])


if __name__ == "__main__":
    main()
