"""One servable model version, split by concern: the executor that runs batches
(``executor``), the figures read from the core (``statistics``), and the thin
``ServableModel`` that ties them to a model file (``steadyserve.model``)."""
