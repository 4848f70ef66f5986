"""Member kinds (``MEMBERS``): single, wide, wide_dim, joint, distill (:mod:`.kinds`), rfc
(:mod:`.rfc`), diverse (:mod:`.diverse`)."""

from richrep.members import diverse, kinds, matryoshka, rfc  # noqa: F401  (registration)
from richrep.members.base import (
    Loader,
    Member,
    MemberKind,
    PlanContext,
    build_model,
    kind_of,
    order_by_dependencies,
    plan_members,
    waves,
)

__all__ = [
    "Loader",
    "Member",
    "MemberKind",
    "PlanContext",
    "build_model",
    "kind_of",
    "order_by_dependencies",
    "plan_members",
    "waves",
]
