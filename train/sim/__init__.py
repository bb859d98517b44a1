"""The closed-loop experiment: policies rank, the world answers, the pipeline retrains.

``config`` (SimulateConfig: the jobs/simulate.py options), ``arms`` (one arm's logs, lake and
model), ``ranker`` (a trained model + policy as the world's slate policy), ``measure`` (what is
measured per arm and round), ``loop`` (``run_simulation``: rounds x arms x seeds through the real
ETL, Ray Train and MLflow), ``report`` (the table, intervals, plots and the final JSON).
"""
