"""Training: K seeds and the baselines, checkpointed in the run store."""

from richrep.training.engine import load_member, train_local
from richrep.training.members import Member, build_model, plan_members
from richrep.training.seeding import seed_hash

__all__ = ["Member", "build_model", "load_member", "plan_members", "seed_hash", "train_local"]
