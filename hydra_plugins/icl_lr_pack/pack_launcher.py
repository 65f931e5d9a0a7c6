"""`python train.py -m hydra/launcher=pack ...`: the multirun's jobs grouped into packs of up to
`hydra.launcher.size` runs of one shape, each pack trained as one program (icl_lr/train/pack.py) in this
process, each job still its own run dir (the sweep's subdir) and W&B run. Hydra's BasicLauncher
(hydra/_internal/core_plugins/basic_launcher.py) composes each job as here; `run_job` is replaced by
icl_lr.cli.pack, which trains a pack's jobs side by side."""

import logging
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, setup_globals
from hydra.plugins.launcher import Launcher
from omegaconf import open_dict

log = logging.getLogger("icl_lr")


class PackLauncher(Launcher):
    def __init__(self, size: int = 16) -> None:
        super().__init__()
        self.size, self.config, self.hydra_context = size, None, None

    def setup(self, *, hydra_context, task_function, config) -> None:
        self.config, self.hydra_context = config, hydra_context

    def _job(self, overrides: list, idx: int) -> tuple:
        """(the Job as icl_lr.cli.pack trains it, the job's config with Hydra's node) of one job."""
        from icl_lr.cli.pack import write_attempt
        from icl_lr.cli.train import GROUPS, Job

        sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(sweep_config):
            sweep_config.hydra.job.id = sweep_config.hydra.job.num = idx
            run_dir = Path(sweep_config.hydra.sweep.dir) / str(sweep_config.hydra.sweep.subdir)
            sweep_config.hydra.runtime.output_dir = str(run_dir.absolute())
        HydraConfig.instance().set_config(sweep_config)  # what ${hydra:...} in the job's config reads
        cfg, attempt_dir = write_attempt(sweep_config, run_dir, list(overrides))
        choices = {group: sweep_config.hydra.runtime.choices.get(group) for group in GROUPS}
        return Job(cfg, run_dir, attempt_dir, choices, list(overrides)), sweep_config

    def launch(self, job_overrides, initial_job_idx: int) -> list:
        from icl_lr.cli.errors import INTERRUPTED, PREEMPTED, exit_code
        from icl_lr.cli.pack import console_logging, train_jobs
        from icl_lr.fields import ConfigError
        from icl_lr.run.config import from_dictconfig
        from icl_lr.run.sweep.process import packed_exit_code
        from icl_lr.train import pack, parallel
        from icl_lr.train.preemption import StopRequest

        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        console_logging()
        jobs, configs = [], []
        for idx, overrides in enumerate(job_overrides, initial_job_idx):
            log.info("#%d : %s", idx, " ".join(filter_overrides(overrides)))
            job, sweep_config = self._job(overrides, idx)
            jobs.append(job)
            configs.append(sweep_config)
        try:
            cfgs = [from_dictconfig(job.cfg, job.overrides) for job in jobs]
            parallel.use_cpu_devices(cfgs[0])
            packs = pack.groups(cfgs, self.size, parallel.data_mesh())
        except ConfigError as error:
            code = exit_code(error)
            packs, codes = [], dict.fromkeys(range(len(jobs)), code)
        else:
            log.info("%d jobs in %d pack%s of up to %d: %s", len(jobs), len(packs), "s" * (len(packs) > 1),
                     self.size, " + ".join(str(len(members)) for members, _ in packs))  # fmt: skip
            codes = {}
        stop = StopRequest().install()
        for members, keys in packs:  # a pack that fails, or whose run diverges, does not stop the next
            code = train_jobs([jobs[i] for i in members], stop, keys)
            codes |= {i: packed_exit_code(jobs[i].run_dir, code) for i in members}
            if code in (INTERRUPTED, PREEMPTED):  # the same command resumes every run
                raise SystemExit(code)
        return [self._result(configs[i], jobs[i], codes.get(i, 1)) for i in range(len(jobs))]

    @staticmethod
    def _result(sweep_config, job, code: int) -> JobReturn:
        from icl_lr.cli.train import JobFailed

        result = JobReturn(overrides=job.overrides, cfg=job.cfg, hydra_cfg=sweep_config, working_dir=str(Path.cwd()),
                           task_name="train")  # fmt: skip
        if code == 0:
            result.status, result.return_value = JobStatus.COMPLETED, None
        else:
            result.status = JobStatus.FAILED
            result.return_value = JobFailed(f"{job.run_dir}: exit code {code} (its train.log says why)")
        return result
