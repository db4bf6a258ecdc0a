"""Greedy coreset solvers on gradient features: pure tensor functions, one algorithm per module.

- :mod:`.craig`: CRAIG, facility location by lazy (or stochastic) greedy.
- :mod:`.craig_batched`: its lazy greedy for several problems at once, no host sync per pick (GPU).
- :mod:`.omp_exact`: GradMatch's exact reference, one-atom OMP.
- :mod:`.omp_batch`: GradMatch at scale, batch OMP (its module docstring is the design note).
- :mod:`.cholesky`: the factor helpers and the memory refusal both OMPs share.
"""

from advtrain.selection.solvers.cholesky import FactorTooLarge
from advtrain.selection.solvers.craig import facility_location, facility_location_groups
from advtrain.selection.solvers.omp_batch import batch_omp
from advtrain.selection.solvers.omp_exact import orthogonal_matching_pursuit

__all__ = [
    "FactorTooLarge", "batch_omp", "facility_location", "facility_location_groups", "orthogonal_matching_pursuit",
]
