"""The stages of a run — train, evaluate, analyze, report — each taking a :class:`~richrep.run.Run`
and reading what the stages before it wrote."""
