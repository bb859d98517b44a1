"""MLflow tracking for training runs: config, lineage, metrics, plots, environment, model.

Where runs go (store.py): ``tracking_uri`` when given (jobs pass ``--tracking-uri``), else the
``MLFLOW_TRACKING_URI`` environment variable, else a local SQLite store at
``<data>/mlflow/mlflow.db`` (``etl.project.DATA_DIR``) with artifacts in ``<data>/mlflow/artifacts``
(works with no server; ``mlflow ui --backend-store-uri sqlite:///...`` browses it).

Modules, one concern each (import them directly; this package re-exports nothing):

- ``store``: where runs go (``configure``, ``ensure_experiment``) and the tag prefix ``TAG``;
- ``lineage``: the Delta tables (path, version) a run read, a few of their rows;
- ``params``: the config as params; ``environment``: packages, platform, git commit;
- ``plots``: loss/AUC per epoch, ROC and calibration on test;
- ``runs``: one run per training (``training_run``, ``RunHandle.log_result``/``register``);
- ``comparison``: a parent run per model, a child per seed, the best seed registered.

Use from the driver (train/runner.py)::

    from train.tracking.comparison import comparison_run

    with comparison_run(cfg.model, "isrec", comparison_id="cmp-1", config=cfg) as cmp:
        for seed in seeds:
            with cmp.seed_run(seed) as run:        # a crash marks this run (and the parent) FAILED
                result = run_training(replace(cfg, seed=seed))  # a TrainResult
                run.log_result(result)              # lake, spec, samples version: from result
    # on exit: mean/std of the seeds' test metrics on the parent run, and the best seed's model
    # registered as a new version of isrec-rnn_mtl with alias "challenger"

or one run on its own (``train.tracking.runs``)::

    with training_run("isrec") as run:
        run.register(run.log_result(result))        # registered as isrec-<model>@challenger

Params: the flattened config, plus ``model_resolved.<name>`` (every model hyperparameter after
defaults, as the logged model uses them) and ``data.*`` (lineage).
Metric names: final test metrics ``test_<name>``; per-epoch history keys as given (e.g.
``train_loss``, ``valid_ctr_auc``; nested dicts are flattened with ``_``) with ``step=epoch``.
Tags: ``isrec.model``, ``isrec.comparison_id``, ``isrec.seed``, ``isrec.role``
(comparison | seed | single), ``isrec.data.<table>.version`` / ``.path``, ``isrec.env.*``.
"""
