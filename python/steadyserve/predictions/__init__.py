"""The feedback loop: a prediction log for retraining, late ground-truth labels joined
to it, and live model-quality KPIs.

- ``capture``: what an executor hands over once per batch (a ``LoggedBatch``: the
  sampled requests' ids, raw and scaled inputs, outputs), copied off the batch buffer.
- ``writer``: the ``PredictionLog``: a bounded queue and one writer thread that writes
  rotating Parquet (or JSON lines) files per model; full queue: dropped and counted.
  ``records`` splits a batch by the model each request asked for; ``files`` names,
  hides (``.partial``) and lists the files; ``parquet_files`` and ``jsonl_files`` are
  the two formats.
- ``reader``: reads those files back (export, the join's restart).
- ``labels``: the durable label files (JSON lines) the feedback endpoint appends to;
  ``label_values`` checks what a feedback item may hold.
- ``feedback``: the ``QualityMonitor``: labels joined to logged predictions within a
  bounded window (``join``: one model's index and pending labels), the KPIs.
- ``kpi``: sliding windows of labelled requests per model version, their KPIs and
  threshold breaches.
- ``actions``: what a breach does (rollback, failover); ``loop``: all of it put
  together for one Runtime.
- ``export``: ``steadyserve export``: a training-ready dataset from the log.

On disk, under the log's root, one directory per model asked for (a backup's answers
for it are logged there too, ``answered_by`` says who answered)::

    ROOT/<model>/predictions-<UTC start>-<host>.<pid>-<seq>.parquet   (or .jsonl)
    ROOT/<model>/labels-<host>.<pid>.jsonl
"""
