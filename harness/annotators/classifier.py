"""The classifier a CAM-based annotator scores with: trained on the train split with class
labels only, once, by the runner's own training loop (seeded, checkpointed, resumable) and
through the stage cache, so it is the very classifier a CAM baseline with the same settings
trains (and reuses). Inside a run its settings are the run's classifier settings unless set
apart (``annotators.<name>.classifier.*``), so it is normally the run's own classifier stage."""
from __future__ import annotations

import logging
from pathlib import Path

from mmengine.config import Config

from harness.models.classifier import ClassifierMethod

log = logging.getLogger("harness")


def trained_classifier(classifier: dict, seed: int, dataset, workdir: Path, device, progress: bool,
                       annotator: str = "annotator") -> ClassifierMethod:
    """Train (or resume, or fetch from the stage cache) the classifier; return it in eval mode."""
    from harness import stage_cache
    from harness.runner import Checkpoints, _RunLog, _shared_stage_key, _train

    cfg = Config({"seed": int(seed), "loader": {"num_workers": 0}, "classifier": dict(classifier)})
    workdir = Path(workdir) / "classifier"
    workdir.mkdir(parents=True, exist_ok=True)
    method = ClassifierMethod(cfg, dataset.num_classes).to(device)
    ckpts = Checkpoints(workdir)
    stage = method.stages[0]
    last = ckpts.path(0, stage.name, stage.epochs)
    if not last.is_file():
        # Inside a run the run's own log already reaches the console.
        run_log = _RunLog(workdir, console=not getattr(logging.getLogger("harness"), "run_console", False))
        try:
            key, _ = _shared_stage_key(stage, 0, cfg, dataset)
            if key is None or not (stage_cache.entry_dir(stage.name, key) / "complete.json").is_file():
                c = cfg.classifier
                why = ("classifier.cache=False" if key is None else
                       "no run has trained a classifier with these settings on this data yet (a run's classifier "
                       "with the same settings and seed is reused from the stage cache)")
                log.info("%s: training its classifier (%s, %d epochs, lr %g, seed %d): %s", annotator,
                         c.backbone, c.epochs, c.lr, cfg.seed, why)
            _train(method, dataset, cfg, device, ckpts, None, workdir, progress, [])
        finally:
            run_log.close()
    method.load_state_dict(ckpts.load(0, stage.name, stage.epochs)["method"])
    method.eval_mode()
    return method
