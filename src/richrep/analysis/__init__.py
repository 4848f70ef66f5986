"""How different are two representations? Similarity measures between feature matrices.

Every function takes feature matrices X (n×d1) and Y (n×d2) on the same n samples (numpy
arrays or torch tensors on any device; computed in torch on X's device with float64 sums):

* CKA (Kornblith et al. 2019): :func:`linear_cka`, :func:`debiased_cka` (feature space),
  :func:`rbf_cka`, :func:`cka_gram` (Gram form), :class:`StreamingCKA` (over batches).
* CCA family: :func:`mean_cca`, :func:`svcca` (Raghu et al. 2017), :func:`procrustes`
  (Ding et al. 2021; a distance: lower = more similar).
* Unit level (Li et al. 2015, "Convergent Learning"): :func:`correlation_matrix`,
  :func:`match_units`, :func:`sparse_prediction`, :func:`spectral_clusters`.
* :func:`permutation_test` and :func:`pairwise` over any measure.
* :func:`compare_seeds`: "are the seeds different?", all of the above over K seeds of a run.

``MEASURES`` registers the scalar measures by name; ``is_similarity(name)`` tells the direction.
"""

from richrep.analysis.cca import canonical_correlations, mean_cca, procrustes, svcca
from richrep.analysis.cka import (
    StreamingCKA,
    cka_gram,
    debiased_cka,
    gram_linear,
    gram_rbf,
    hsic_gram,
    linear_cka,
    linear_cka_gram,
    rbf_cka,
)
from richrep.analysis.matching import (
    Clustering,
    Matching,
    SparsePrediction,
    correlation_matrix,
    dead_units,
    match_units,
    sparse_prediction,
    spectral_clusters,
)
from richrep.analysis.measures import MEASURES, is_similarity
from richrep.analysis.permutation import PermutationResult, pairwise, permutation_test
from richrep.analysis.seeds import DEFAULT_MEASURES, compare_seeds

__all__ = [
    "DEFAULT_MEASURES",
    "MEASURES",
    "Clustering",
    "Matching",
    "PermutationResult",
    "SparsePrediction",
    "StreamingCKA",
    "canonical_correlations",
    "cka_gram",
    "compare_seeds",
    "correlation_matrix",
    "dead_units",
    "debiased_cka",
    "gram_linear",
    "gram_rbf",
    "hsic_gram",
    "is_similarity",
    "linear_cka",
    "linear_cka_gram",
    "match_units",
    "mean_cca",
    "pairwise",
    "permutation_test",
    "procrustes",
    "rbf_cka",
    "sparse_prediction",
    "spectral_clusters",
    "svcca",
]
