"""Models: encoder families with a width multiplier (mlp, cnn, resnet18, resnet50), the joint
K-tower wrapper, heads."""

from richrep.models.encoders import ENCODERS, Encoder, build_encoder, count_params
from richrep.models.heads import Classifier, JointEncoder

__all__ = ["ENCODERS", "Classifier", "Encoder", "JointEncoder", "build_encoder", "count_params"]
