"""Training objectives: one ``nn.Module`` per loss, registered in ``OBJECTIVES``.

An objective maps one model's logits on a batch (and the batch: labels and any per-example
targets such as a teacher's logits) to a scalar loss; ``predict`` turns logits into class
predictions for the training and validation accuracy. What the training loop asks of an
objective are methods of :class:`Objective` (``folds``, ``prepare``, ``inputs``, ``score``):
an objective with needs of its own (SimSiam's two views, k-NN validation) overrides them.
"""

from richrep.objectives.base import Batch, Objective, build_objective
from richrep.objectives.bct import BackwardCompatible
from richrep.objectives.cross_entropy import CrossEntropy
from richrep.objectives.distillation import MultiHeadDistillation
from richrep.objectives.divdis import DivDis
from richrep.objectives.fishr import Fishr
from richrep.objectives.group_dro import GroupDRO, GroupDROSets
from richrep.objectives.irm import IRM
from richrep.objectives.matryoshka import Matryoshka
from richrep.objectives.pseudo_labels import PseudoLabelHeads
from richrep.objectives.simsiam import SimSiam
from richrep.objectives.vrex import VREx

__all__ = [
    "IRM",
    "BackwardCompatible",
    "Batch",
    "CrossEntropy",
    "DivDis",
    "Fishr",
    "GroupDRO",
    "GroupDROSets",
    "Matryoshka",
    "MultiHeadDistillation",
    "Objective",
    "PseudoLabelHeads",
    "SimSiam",
    "VREx",
    "build_objective",
]
