"""``hydra/sweeper=famlab_optuna``: Optuna (4.x and later) search through Hydra's sweeper interface.

Each round asks the study for ``n_jobs`` trials, launches them as one batch through the configured
launcher (basic, joblib, submitit: any), and tells the study each result: the job's return value
(``optimized_metric`` of its summary), ``PRUNED`` when its ``summary.json`` says ``pruned``,
``FAIL`` for a failed or non-finite run. The study is stored in SQLite in the sweep directory
(``<sweep dir>/optuna.db``), so running the same command again (same ``sweep_name``) continues it:
finished trials are kept, trials that were running when the search was killed are marked failed,
and only the missing ``n_trials`` are run. Every job gets ``optuna.storage``, ``optuna.study_name``
and ``optuna.trial`` so it can reopen its trial and report intermediate losses for pruning
(``famlab.lit.pruning.OptunaPruning``). The best trial is written to ``<sweep dir>/optuna_best.yaml``.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("famlab.search")


# the sweeper's config node (a plain dict: Hydra's plugin scanner executes this module outside
# sys.modules, where dataclasses cannot be defined)
SWEEPER_DEFAULTS = {
    "_target_": "hydra_plugins.famlab_optuna_sweeper.optuna_sweeper.FamlabOptunaSweeper",
    "_recursive_": False,  # sampler and pruner arrive as configs (the sampler is reseeded on resume)
    "direction": "minimize",  # minimize | maximize
    "study_name": None,  # null: famlab
    "storage": None,  # null: sqlite:///<sweep dir>/optuna.db
    "n_trials": 20,
    "n_jobs": 1,  # trials launched together (one launcher batch)
    "sampler": None,  # e.g. {_target_: optuna.samplers.TPESampler, seed: 0}; null: TPE seeded 0
    "pruner": None,  # e.g. {_target_: optuna.pruners.MedianPruner, n_warmup_steps: 10}; null: none
    "params": {},  # key: choice(...) | range(...) | interval(...) | tag(log, interval(...))
    "enqueue": [],  # points to try first, e.g. [{optimizer.lr: 0.003}] (a new study only)
}
ConfigStore.instance().store(group="hydra/sweeper", name="famlab_optuna", node=SWEEPER_DEFAULTS, provider="famlab")


class FamlabOptunaSweeper(Sweeper):
    def __init__(
        self,
        direction: str = "minimize",
        study_name: str | None = None,
        storage: str | None = None,
        n_trials: int = 20,
        n_jobs: int = 1,
        sampler: Any = None,
        pruner: Any = None,
        params: Any = None,
        enqueue: Any = None,
    ):
        self.direction, self.study_name, self.storage = direction, study_name or "famlab", storage
        self.n_trials, self.n_jobs = n_trials, n_jobs
        self.sampler_cfg, self.pruner_cfg = sampler, pruner
        self.params = (
            OmegaConf.to_container(params, resolve=True) if OmegaConf.is_config(params) else dict(params or {})
        )
        self.enqueue = (
            OmegaConf.to_container(enqueue, resolve=True) if OmegaConf.is_config(enqueue) else list(enqueue or [])
        )
        self.config: DictConfig | None = None
        self.launcher = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    # --- the study ------------------------------------------------------------------------------
    def _instantiate(self, node: Any, **extra):
        from hydra.utils import instantiate

        if node is None:
            return None
        node = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node)
        return instantiate({**node, **{k: v for k, v in extra.items() if k in node}})

    def open_study(self, sweep_dir: Path):
        import optuna

        storage = self.storage or f"sqlite:///{sweep_dir.resolve() / 'optuna.db'}"
        probe = optuna.create_study(
            study_name=self.study_name, storage=storage, direction=self.direction, load_if_exists=True
        )
        earlier = probe.get_trials(deepcopy=False)
        for t in earlier:  # running when the previous search was killed: never finished, never reran
            if t.state == optuna.trial.TrialState.RUNNING:
                probe._storage.set_trial_state_values(t._trial_id, state=optuna.trial.TrialState.FAIL)
                log.warning("trial %d was running when the search stopped: marked failed", t.number)
        sampler_cfg = self.sampler_cfg or {"_target_": "optuna.samplers.TPESampler", "seed": 0}
        base_seed = (OmegaConf.to_container(sampler_cfg) if OmegaConf.is_config(sampler_cfg) else sampler_cfg).get(
            "seed"
        )
        # a resumed search draws new points, not the first ones again
        sampler = self._instantiate(sampler_cfg, seed=None if base_seed is None else int(base_seed) + len(earlier))
        pruner = self._instantiate(self.pruner_cfg) if self.pruner_cfg else optuna.pruners.NopPruner()
        study = optuna.load_study(study_name=self.study_name, storage=storage, sampler=sampler, pruner=pruner)
        if not earlier:
            for point in self.enqueue:
                study.enqueue_trial(dict(point))
        return study, storage

    # --- the sweep ------------------------------------------------------------------------------
    def sweep(self, arguments: list[str]) -> Any:
        """Run the search; bad sweeper settings end the process with one line and exit status 2."""
        from famlab.errors import ConfigError

        try:
            self.check()
            return self._sweep(arguments)
        except ConfigError as e:
            print(f"famlab: error: {e}", file=sys.stderr)
            sys.exit(2)

    def check(self) -> None:
        from famlab.errors import ConfigError

        if self.direction not in ("minimize", "maximize"):
            raise ConfigError(f"hydra.sweeper.direction must be minimize or maximize, got {self.direction!r}")
        if not all(isinstance(n, int) and n >= 1 for n in (self.n_trials, self.n_jobs)):
            raise ConfigError(
                f"hydra.sweeper.n_trials and n_jobs must be integers >= 1, got {self.n_trials}, {self.n_jobs}"
            )

    def _sweep(self, arguments: list[str]) -> Any:
        import optuna

        from famlab.search import override, search_space

        assert self.config is not None and self.launcher is not None
        space = search_space(self.params)
        fixed = list(arguments)
        from hydra.core.override_parser.overrides_parser import OverridesParser

        swept = [o.input_line for o in OverridesParser.create().parse_overrides(fixed) if o.is_sweep_override()]
        if swept:
            from famlab.errors import ConfigError

            raise ConfigError(
                f"hydra/sweeper=famlab_optuna: put search spaces in hydra.sweeper.params, "
                f"not on the command line ({swept[0]})"
            )
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        study, storage = self.open_study(sweep_dir)
        finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        done = sum(t.state in finished for t in study.get_trials(deepcopy=False))
        log.info("Optuna study %r in %s: %d of %d trials finished", self.study_name, storage, done, self.n_trials)
        results, failed = [], 0
        while done < self.n_trials:
            if failed >= self.n_trials:  # failed trials are retried with new points, but not forever
                raise RuntimeError(
                    f"famlab_optuna: {failed} trials failed and {done} of {self.n_trials} finished; "
                    f"see the failed jobs' summary.json in {sweep_dir}"
                )
            trials = [study.ask(space) for _ in range(min(self.n_jobs, self.n_trials - done))]
            batch = [
                fixed
                + [override(k, v) for k, v in t.params.items()]
                + [
                    override("optuna.storage", storage),
                    override("optuna.study_name", self.study_name),
                    f"optuna.trial={t.number}",
                ]
                for t in trials
            ]
            self.validate_batch_is_legal(batch)
            returns = self.launcher.launch(batch, initial_job_idx=trials[0].number)
            for trial, ret in zip(trials, returns):
                state, value = self.outcome(ret)
                if state == "pruned":
                    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                elif state == "failed":
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
                    failed += 1
                else:
                    study.tell(trial, value)
                    log.info("trial %d: %.6g", trial.number, value)
                done += state in ("pruned", "completed")
                results.append(ret)
        self.write_best(study, sweep_dir)
        return results

    @staticmethod
    def outcome(ret) -> tuple[str, float | None]:
        """(completed | pruned | failed, value) of one launched job."""
        from hydra.core.utils import JobStatus

        summary = {}
        try:
            out_dir = Path(str(ret.hydra_cfg.hydra.runtime.output_dir))
            summary = json.loads((out_dir / "summary.json").read_text())
        except (OSError, ValueError, AttributeError):
            pass
        if summary.get("status") == "pruned":
            return "pruned", None
        if ret.status != JobStatus.COMPLETED:
            return "failed", None
        value = ret.return_value
        if not isinstance(value, (int, float)) or not math.isfinite(float(value)):
            return "failed", None
        return "completed", float(value)

    def write_best(self, study, sweep_dir: Path) -> None:
        try:
            best = study.best_trial
        except ValueError:  # no completed trial
            log.warning("no trial of study %r completed", self.study_name)
            return
        report = {
            "name": self.study_name,
            "direction": self.direction,
            "best_trial": best.number,
            "best_value": best.value,
            "best_params": best.params,
            "trials": {s.name.lower(): n for s, n in _counts(study).items()},
        }
        OmegaConf.save(OmegaConf.create(report), sweep_dir / "optuna_best.yaml")
        log.info("best trial %d: value %s, params %s", best.number, best.value, best.params)
        print(f"best trial {best.number}: {best.value} with {best.params} ({sweep_dir / 'optuna_best.yaml'})")


def _counts(study) -> dict:
    counts: dict = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state] = counts.get(t.state, 0) + 1
    return counts
