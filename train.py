"""Train one model: `python train.py [hydra overrides]`. One Hydra run = one W&B run.

Examples:
  python train.py                                   # default: d=5, tiny GPT-2, ~minutes on a CPU
  python train.py model=small data.noise_std=0.5 training.learning_rate=3e-4
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
from icl_lr.run import run
from icl_lr.tracking import WandbRun


@hydra.main(config_path="configs", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        run_cfg = from_dictconfig(cfg)
    except ConfigError as error:
        logging.getLogger("icl_lr").error("config error: %s", error)
        sys.exit(2)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    wandb_run = WandbRun(cfg.wandb, OmegaConf.to_container(cfg, resolve=True), run_dir)
    run(run_cfg, run_dir, trackers=[wandb_run], init_from=cfg.init_from)


if __name__ == "__main__":
    main()
