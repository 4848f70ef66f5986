"""How richrep runs, below every stage: the device and precision, seeding, the thread budget,
the CPU compute policy and the environment record. Nothing here knows of runs or stages."""
