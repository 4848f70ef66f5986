"""Member kinds (``MEMBERS``): single, wide, wide_dim, joint, distill (:mod:`.kinds`), rfc
(:mod:`.rfc`), diverse (:mod:`.diverse`), matryoshka (:mod:`.matryoshka`), bct and bt2
(:mod:`.bct`), simplex (:mod:`.simplex`)."""

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
