"""Are the seeds different? The seed-similarity summary of K feature matrices, on arrays.

:func:`compare_seeds` takes the features of K trained seeds (and optionally of the same K
encoders untrained, as a reference) on the same n samples and returns a JSON-ready summary:
the K×K matrix of each measure (CKA: Kornblith et al. 2019; SVCCA: Raghu et al. 2017;
Procrustes: Ding et al. 2021), the matched-unit correlations, the sparse-prediction λ curve and
spectral clustering of the units of two seeds (Li et al. 2015, "Convergent Learning"), a
permutation test of linear CKA, and warnings when two seeds are (near-)identical. Loading runs,
writing files and plotting live elsewhere; this module only computes.
"""

from __future__ import annotations

import itertools
import numbers
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from richrep.analysis._common import Array, feature_matrix
from richrep.analysis.matching import match_units, sparse_prediction, spectral_clusters
from richrep.analysis.measures import MEASURES
from richrep.analysis.permutation import pairwise, permutation_test
from richrep.errors import ConfigError

DEFAULT_MEASURES = ("linear_cka", "debiased_cka", "rbf_cka", "mean_cca", "svcca", "procrustes")
IDENTICAL_CKA = 0.999  # above this two seeds are flagged as (near-)identical
MIN_SAMPLES = 4  # debiased CKA needs 4 rows; sparse prediction fits on half and tests on half


def compare_seeds(
    trained: Sequence[Array],
    random: Sequence[Array] | None,
    names: Sequence[str],
    *,
    measures: Sequence[str] = DEFAULT_MEASURES,
    n_permutations: int = 200,
    n_clusters: int = 16,
    seed: int = 0,
    checkpoint_sha256: Mapping[str, str] | None = None,
    split: str = "",
    seeds: Sequence[int] | None = None,
) -> dict[str, Any]:
    """The seed-similarity summary of K trained feature matrices (n×d each, same n samples).

    ``random``: the features of the same K encoders before training (a reference; None to
    skip: ``random_measures`` is then empty and ``matching`` has no ``random_one_to_one``).
    ``names`` (and optionally ``seeds``) label the K members. The unit-level analyses (Li et
    al. 2015) and the permutation test use the first two seeds; ``n_clusters`` is capped at
    half the units of the first seed. ``checkpoint_sha256`` maps member names to checkpoint
    digests: byte-identical checkpoints are warned about, as is a linear CKA above
    ``IDENTICAL_CKA`` between two seeds. ``seed`` seeds the permutation test and the
    clustering; ``split`` is recorded as is. Keys of the result: split, n, seeds (when given),
    members, measures, random_measures, self, matching, sparse_prediction, spectral,
    permutation_test, warnings.
    """
    tr, rnd = _check(trained, random, names, measures, n_permutations, n_clusters, seeds)
    if checkpoint_sha256 is not None:
        unknown = sorted(set(checkpoint_sha256) - set(names))
        if unknown:
            raise ConfigError(
                f"compare_seeds: checkpoint_sha256 names {unknown}, which are not among the "
                f"members {list(names)}"
            )
    n = int(tr[0].shape[0])
    summary: dict[str, Any] = {"split": split, "n": n}
    if seeds is not None:
        summary["seeds"] = [int(s) for s in seeds]
    summary |= {"members": list(names), "measures": {}, "random_measures": {}, "self": {}}
    for name in measures:
        summary["measures"][name] = pairwise(tr, name).tolist()
        if rnd is not None:
            summary["random_measures"][name] = pairwise(rnd, name).tolist()
        summary["self"][name] = float(MEASURES.entry(name).fn(tr[0], tr[0]))
    pair = list(names[:2])
    summary |= _pair_analyses(tr[0], tr[1], rnd, pair, n_clusters, n_permutations, seed)
    summary["warnings"] = _warnings(names, checkpoint_sha256 or {}, summary)
    return summary


def _pair_analyses(
    a: torch.Tensor,
    b: torch.Tensor,
    rnd: list[torch.Tensor] | None,
    pair: list[str],
    n_clusters: int,
    n_permutations: int,
    seed: int,
) -> dict[str, Any]:
    """The unit-level analyses of the first two seeds (``pair``): unit matching, sparse
    prediction, spectral clusters and the permutation test of linear CKA."""
    n = int(a.shape[0])
    out: dict[str, Any] = {}
    out["matching"] = {
        "pair": list(pair),
        "one_to_one": match_units(a, b, method="one_to_one").correlations.tolist(),
        "semi": match_units(a, b, method="semi").correlations.tolist(),
    }
    if rnd is not None:
        out["matching"]["random_one_to_one"] = match_units(rnd[0], rnd[1]).correlations.tolist()
    from sklearn.exceptions import ConvergenceWarning

    half = n // 2
    with warnings.catch_warnings():  # the weakest λ of the path may stop short; still reported
        warnings.simplefilter("ignore", ConvergenceWarning)
        sp = sparse_prediction(a[:half], b[:half], X_eval=a[half:], Y_eval=b[half:], n_alphas=12)
    out["sparse_prediction"] = {
        "pair": list(pair),
        "alphas": sp.alphas.tolist(),
        "nse": sp.nse.tolist(),
        "nonzero": sp.nonzero.tolist(),
    }
    k = int(min(n_clusters, a.shape[1] // 2))
    cl = spectral_clusters(a, b, n_clusters=k, seed=seed)
    out["spectral"] = {
        "pair": list(pair),
        "n_clusters": k,
        "n_mixed": int(cl.n_mixed),
        "sizes": np.asarray(cl.sizes).tolist(),
    }
    pt = permutation_test("linear_cka", a, b, n_permutations=n_permutations, seed=seed)
    out["permutation_test"] = {
        "pair": list(pair),
        "measure": "linear_cka",
        "observed": float(pt.observed),
        "p_value": float(pt.p_value),
        "null_mean": float(pt.null.mean()),
        "n_permutations": int(n_permutations),
    }
    return out


def _check(
    trained: Sequence[Array],
    random: Sequence[Array] | None,
    names: Sequence[str],
    measures: Sequence[str],
    n_permutations: int,
    n_clusters: int,
    seeds: Sequence[int] | None,
) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
    """Validate the arguments of :func:`compare_seeds` before any computation."""
    if isinstance(measures, str):
        raise ConfigError(
            f"compare_seeds: measures must be a sequence of measure names; got {measures!r}"
        )
    for m in measures:
        MEASURES.entry(m, where="compare_seeds measures")
    if len(trained) < 2:
        raise ConfigError(
            f"compare_seeds needs at least two trained seeds to compare; got {len(trained)}"
        )
    if isinstance(names, str) or len(names) != len(trained):
        raise ConfigError(
            f"compare_seeds: names must give one name per trained seed ({len(trained)}); "
            f"got {names!r}"
        )
    if len(set(names)) != len(names):
        raise ConfigError(f"compare_seeds: names must be distinct; got {list(names)}")
    if seeds is not None and len(seeds) != len(trained):
        raise ConfigError(
            f"compare_seeds: seeds must give one seed per trained seed ({len(trained)}); "
            f"got {list(seeds)}"
        )
    if random is not None and len(random) != len(trained):
        raise ConfigError(
            f"compare_seeds: random must hold the untrained encoders of the same "
            f"{len(trained)} seeds; got {len(random)} feature matrices"
        )
    if not _is_int(n_permutations) or n_permutations < 1:
        raise ConfigError(f"compare_seeds: n_permutations must be >= 1; got {n_permutations!r}")
    if not _is_int(n_clusters) or n_clusters < 2:
        raise ConfigError(f"compare_seeds: n_clusters must be >= 2; got {n_clusters!r}")
    tr = [feature_matrix(t, f"trained[{i}]") for i, t in enumerate(trained)]
    rnd = (
        None
        if random is None
        else [feature_matrix(t, f"random[{i}]") for i, t in enumerate(random)]
    )
    n = tr[0].shape[0]
    for what, group in (("trained", tr), ("random", rnd or [])):
        for i, t in enumerate(group):
            if t.shape[0] != n:
                raise ConfigError(
                    f"compare_seeds: {what}[{i}] has {t.shape[0]} rows (samples) but trained[0] "
                    f"has {n}; all feature matrices must hold the same samples"
                )
    if n < MIN_SAMPLES:
        raise ConfigError(f"compare_seeds needs at least {MIN_SAMPLES} samples (rows); got {n}")
    if tr[0].shape[1] < 2:
        raise ConfigError(
            f"compare_seeds: spectral clustering of units needs trained[0] to have at least 2 "
            f"units (columns); got {tr[0].shape[1]}"
        )
    return tr, rnd


def _is_int(v: object) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _warnings(
    names: Sequence[str], shas: Mapping[str, str], summary: Mapping[str, Any]
) -> list[str]:
    """Byte-identical checkpoints, and pairs of seeds with linear CKA above IDENTICAL_CKA."""
    out = []
    known = [m for m in names if m in shas]
    for x, y in itertools.combinations(known, 2):
        if shas[x] == shas[y]:
            out.append(f"{x} and {y} have byte-identical checkpoints: the seeds did not differ")
    cka = np.asarray(summary["measures"].get("linear_cka", []))
    for i, j in itertools.combinations(range(len(cka)), 2):
        if cka[i, j] > IDENTICAL_CKA:
            out.append(
                f"{summary['members'][i]} and {summary['members'][j]} have linear CKA "
                f"{cka[i, j]:.4f}: (near-)identical representations"
            )
    return out
