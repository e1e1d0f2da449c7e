"""Aggregation math of federated training: clipping, weighted means and server optimizers.

Pure functions in the manner of Flower's ``server/strategy/aggregate.py``: arrays and weights in,
arrays (and optimizer state) out. Nothing here reads or writes files, draws random numbers or keeps
state between calls; the optimizer moments are an explicit :class:`OptimizerState` argument and
return value, persisted by :mod:`ecgdig.federated.coordinator` in the round folder.

A model (or an update) is a ``dict[str, numpy.ndarray]`` of float32 tensors, keyed by parameter
name; every function here checks that the names, shapes and dtypes agree and never broadcasts.

References
----------
.. [1] H. B. McMahan, E. Moore, D. Ramage, S. Hampson, B. Agüera y Arcas, "Communication-efficient
   learning of deep networks from decentralized data", AISTATS 2017 (FedAvg), arXiv:1602.05629.
.. [2] T. Li, A. K. Sahu, M. Zaheer, M. Sanjabi, A. Talwalkar, V. Smith, "Federated optimization in
   heterogeneous networks", MLSys 2020 (FedProx), arXiv:1812.06127.
.. [3] S. J. Reddi, Z. Charles, M. Zaheer, Z. Garrett, K. Rush, J. Konečný, S. Kumar,
   H. B. McMahan, "Adaptive federated optimization", ICLR 2021, arXiv:2003.00295 (Algorithm 2:
   FedAdagrad, FedAdam, FedYogi).
.. [4] H. B. McMahan, D. Ramage, K. Talwar, L. Zhang, "Learning differentially private recurrent
   language models", ICLR 2018, arXiv:1710.06963 (DP-FedAvg: clipping, capped weights, fixed
   denominator).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, TypeAlias

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "DEFAULT_BETA1",
    "DEFAULT_BETA2",
    "DEFAULT_SERVER_LR",
    "DEFAULT_TAU",
    "STRATEGY_NAMES",
    "DeltaAccumulator",
    "OptimizerState",
    "ServerOptimizer",
    "StrategyName",
    "Tensors",
    "capped_weight",
    "check_same_structure",
    "clip_by_l2_norm",
    "clipped_delta",
    "fedadam_step",
    "fedavg_step",
    "fedyogi_step",
    "fixed_denominator_mean",
    "global_l2_norm",
    "init_optimizer_state",
    "make_server_optimizer",
    "server_step",
    "weighted_mean",
]

Tensors: TypeAlias = dict[str, NDArray[np.float32]]
"""A model or an update: parameter name -> float32 array."""

StrategyName: TypeAlias = Literal["fedavg", "fedprox", "fedadam", "fedyogi"]
STRATEGY_NAMES: tuple[StrategyName, ...] = ("fedavg", "fedprox", "fedadam", "fedyogi")

# The defaults, defined here and nowhere else.
DEFAULT_SERVER_LR: Mapping[StrategyName, float] = {
    # FedAvg/FedProx: x <- x + mean_delta, the plain average of the local models (eta = 1).
    "fedavg": 1.0,
    "fedprox": 1.0,
    # Adaptive server optimizers: the first steps move each coordinate by about eta (m / sqrt(v) is
    # close to sign(delta)), so eta is a per-coordinate step size. Reddi et al. [3] tune eta on a
    # grid of powers of ten for each task; 1e-2 is a starting point inside that grid, not a tuned
    # value. Tune it for the model at hand.
    "fedadam": 1e-2,
    "fedyogi": 1e-2,
}
DEFAULT_BETA1 = 0.9
DEFAULT_BETA2 = 0.99
DEFAULT_TAU = 1e-3


def _as_float64(array: NDArray[np.floating]) -> NDArray[np.float64]:
    return np.asarray(array, dtype=np.float64)


def check_same_structure(
    reference: Mapping[str, NDArray[np.floating]],
    other: Mapping[str, NDArray[np.floating]],
    what: str = "update",
) -> None:
    """Check that ``other`` has exactly the tensor names and shapes of ``reference``.

    Parameters
    ----------
    reference : mapping of str to ndarray
        The expected tensors (only names and shapes are used).
    other : mapping of str to ndarray
        The tensors to check.
    what : str, optional
        What ``other`` is, for the message.

    Raises
    ------
    ValueError
        Names missing or extra, or a shape differs. Nothing is broadcast.

    Examples
    --------
    >>> import numpy as np
    >>> check_same_structure({"w": np.zeros(2)}, {"w": np.ones(2)})
    >>> check_same_structure({"w": np.zeros(2)}, {"w": np.ones(3)})
    Traceback (most recent call last):
    ...
    ValueError: update tensor 'w' has shape (3,), expected (2,)
    """
    missing = sorted(set(reference) - set(other))
    extra = sorted(set(other) - set(reference))
    if missing:
        raise ValueError(f"{what} is missing tensors: {_name_list(missing)}")
    if extra:
        raise ValueError(f"{what} has unexpected tensors: {_name_list(extra)}")
    for name in sorted(reference):
        if np.shape(other[name]) != np.shape(reference[name]):
            got, expected = np.shape(other[name]), np.shape(reference[name])
            raise ValueError(f"{what} tensor {name!r} has shape {got}, expected {expected}")


def _name_list(names: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown if len(names) <= limit else f"{shown} and {len(names) - limit} more"


def global_l2_norm(tensors: Mapping[str, NDArray[np.floating]]) -> float:
    """Return the L2 norm of all tensors taken together, as if flattened into one vector.

    Parameters
    ----------
    tensors : mapping of str to ndarray
        Any float arrays. Summed in float64, in sorted name order (so the result does not depend on
        the mapping's order).

    Returns
    -------
    float
        ``sqrt(sum over tensors of sum(t**2))``; NaN or Inf if any entry is.

    Examples
    --------
    >>> import numpy as np
    >>> global_l2_norm({"a": np.array([3.0], np.float32), "b": np.array([[4.0]], np.float32)})
    5.0
    """
    total = 0.0
    for name in sorted(tensors):
        values = _as_float64(tensors[name]).ravel()
        total += float(np.dot(values, values))
    return math.sqrt(total)


def clip_by_l2_norm(delta: Mapping[str, NDArray[np.floating]], clip_norm: float) -> tuple[Tensors, float]:
    """Scale an update so that its global L2 norm is at most ``clip_norm``.

    ``delta <- delta * min(1, S / ||delta||_2)`` (McMahan et al. 2018 [4], Algorithm 1,
    ``ClipFn``), the norm taken over all tensors together (flat clipping).

    Parameters
    ----------
    delta : mapping of str to ndarray
        The update (local model minus global model). Not modified.
    clip_norm : float
        The clip bound ``S`` > 0, in the units of the parameters.

    Returns
    -------
    clipped : dict of str to float32 ndarray
        New arrays; a zero update is returned unchanged (no division by zero).
    norm : float
        The L2 norm of ``delta`` before clipping.

    Raises
    ------
    ValueError
        ``clip_norm`` is not a finite positive number, or ``delta`` holds NaN or Inf.

    Notes
    -----
    The scaling is done in float64 and cast to float32; if rounding leaves the float32 result a few
    ulps above ``S``, it is shrunk by one float32 ulp at a time until its norm (computed in float64)
    is at most ``S``, so the guarantee the privacy accounting relies on holds exactly.

    Examples
    --------
    >>> import numpy as np
    >>> clipped, norm = clip_by_l2_norm({"w": np.array([3.0, 4.0], np.float32)}, 1.0)
    >>> norm, global_l2_norm(clipped) <= 1.0, [round(float(x), 6) for x in clipped["w"]]
    (5.0, True, [0.6, 0.8])
    """
    if not (math.isfinite(clip_norm) and clip_norm > 0):
        raise ValueError(f"clip_norm must be a finite positive number, got {clip_norm!r}")
    norm = global_l2_norm(delta)
    if not math.isfinite(norm):
        raise ValueError("cannot clip an update that contains NaN or Inf")
    scale = 1.0 if norm <= clip_norm else clip_norm / norm
    clipped = {name: (_as_float64(delta[name]) * scale).astype(np.float32) for name in sorted(delta)}
    shrink = 1.0
    while global_l2_norm(clipped) > clip_norm:
        shrink *= 1.0 - 2.0**-23
        clipped = {
            name: (_as_float64(delta[name]) * (scale * shrink)).astype(np.float32) for name in sorted(delta)
        }
    return clipped, norm


def clipped_delta(
    local_model: Mapping[str, NDArray[np.floating]],
    global_model: Mapping[str, NDArray[np.floating]],
    clip_norm: float,
) -> tuple[Tensors, float]:
    """Return a site's clipped update ``clip(w_local - w_global, S)`` and the norm before clipping.

    Parameters
    ----------
    local_model : mapping of str to ndarray
        ``w_local``, the model after local training.
    global_model : mapping of str to ndarray
        ``w_global``, the model training started from; same names and shapes.
    clip_norm : float
        ``S``.

    Returns
    -------
    delta : dict of str to float32 ndarray
        The clipped update (difference taken in float64).
    norm : float
        ``||w_local - w_global||_2`` before clipping.

    Raises
    ------
    ValueError
        Structure mismatch, NaN / Inf, or an invalid ``clip_norm``.

    Examples
    --------
    >>> import numpy as np
    >>> d, n = clipped_delta({"w": np.array([4.0], np.float32)}, {"w": np.array([1.0], np.float32)}, 1.0)
    >>> d["w"].tolist(), n
    ([1.0], 3.0)
    """
    check_same_structure(global_model, local_model, "local model")
    delta = {
        name: (_as_float64(local_model[name]) - _as_float64(global_model[name])).astype(np.float32)
        for name in sorted(global_model)
    }
    return clip_by_l2_norm(delta, clip_norm)


def capped_weight(num_examples: int, n_cap: float) -> float:
    """Return the DP-FedAvg weight ``w_k = min(n_k / n_cap, 1)`` of a site.

    Bounding every weight by 1 bounds one site's contribution to the weighted sum by ``S``, which
    is the sensitivity the Gaussian noise is calibrated to (McMahan et al. 2018 [4], Section 3).

    Parameters
    ----------
    num_examples : int
        ``n_k``, the site's number of training examples (public when DP is on).
    n_cap : float
        ``n_cap`` > 0: sites with at least this many examples get weight 1.

    Returns
    -------
    float
        The weight in ``[0, 1]``.

    Examples
    --------
    >>> capped_weight(50, 200), capped_weight(500, 200)
    (0.25, 1.0)
    """
    if num_examples < 0:
        raise ValueError(f"num_examples must be >= 0, got {num_examples}")
    if not (math.isfinite(n_cap) and n_cap > 0):
        raise ValueError(f"n_cap must be a finite positive number, got {n_cap!r}")
    return min(num_examples / n_cap, 1.0)


def weighted_mean(deltas: Sequence[tuple[Mapping[str, NDArray[np.floating]], float]]) -> Tensors:
    """Return the weighted mean of updates, ``sum_k w_k d_k / sum_k w_k`` (FedAvg [1]).

    The counterpart of Flower's ``aggregate``. For the streaming form (one update in memory at a
    time) and the fixed-denominator DP form, use :class:`DeltaAccumulator`.

    Parameters
    ----------
    deltas : sequence of (mapping of str to ndarray, float)
        Updates with their weights (usually the sites' example counts ``n_k``).

    Returns
    -------
    dict of str to float32 ndarray
        The mean update, accumulated in float64.

    Raises
    ------
    ValueError
        No updates, a negative or non-finite weight, a zero total weight, or updates whose names or
        shapes differ.

    Examples
    --------
    >>> import numpy as np
    >>> a = {"w": np.array([1.0, 2.0], np.float32)}
    >>> b = {"w": np.array([5.0, 6.0], np.float32)}
    >>> weighted_mean([(a, 1), (b, 3)])["w"].tolist()
    [4.0, 5.0]
    """
    if not deltas:
        raise ValueError("weighted_mean needs at least one update")
    accumulator = DeltaAccumulator({name: np.shape(t) for name, t in deltas[0][0].items()})
    for delta, weight in deltas:
        accumulator.add(delta, weight)
    return accumulator.mean()


class DeltaAccumulator:
    """Running weighted sum of updates, so aggregation holds one update at a time.

    Memory is two float64 copies of the model at most (the sum and the update being added),
    whatever the number of sites. The accumulator is a transient object of one round; it holds no
    optimizer state.

    Parameters
    ----------
    reference_shapes : mapping of str to tuple of int
        The model's tensor names and shapes; every added update must match exactly.

    Attributes
    ----------
    weighted_sum : dict of str to float64 ndarray
        ``sum_k w_k d_k`` so far.
    total_weight : float
        ``sum_k w_k`` so far.
    count : int
        Number of updates added.

    Examples
    --------
    >>> import numpy as np
    >>> acc = DeltaAccumulator({"w": (2,)})
    >>> acc.add({"w": np.array([1.0, 2.0], np.float32)}, 1.0)
    >>> acc.add({"w": np.array([5.0, 6.0], np.float32)}, 3.0)
    >>> acc.mean()["w"].tolist(), acc.fixed_denominator_mean(8.0)["w"].tolist()
    ([4.0, 5.0], [2.0, 2.5])
    """

    def __init__(self, reference_shapes: Mapping[str, tuple[int, ...]]) -> None:
        if not reference_shapes:
            raise ValueError("reference_shapes is empty: a model needs at least one tensor")
        self._shapes = {name: tuple(int(d) for d in shape) for name, shape in reference_shapes.items()}
        self.weighted_sum: dict[str, NDArray[np.float64]] = {
            name: np.zeros(shape, dtype=np.float64) for name, shape in sorted(self._shapes.items())
        }
        self.total_weight = 0.0
        self.count = 0

    def add(self, delta: Mapping[str, NDArray[np.floating]], weight: float) -> None:
        """Add ``weight * delta`` to the sum.

        Parameters
        ----------
        delta : mapping of str to ndarray
            One update; names and shapes must equal ``reference_shapes``.
        weight : float
            Its weight, finite and >= 0.

        Raises
        ------
        ValueError
            Structure mismatch, non-finite values or an invalid weight; the sum is left unchanged.
        """
        if not (math.isfinite(weight) and weight >= 0):
            raise ValueError(f"weight must be finite and >= 0, got {weight!r}")
        check_same_structure(self.weighted_sum, delta)
        if not all(np.isfinite(delta[name]).all() for name in delta):
            raise ValueError("update contains NaN or Inf")
        for name in sorted(self.weighted_sum):
            self.weighted_sum[name] += weight * _as_float64(delta[name])
        self.total_weight += float(weight)
        self.count += 1

    def mean(self) -> Tensors:
        """Return ``sum_k w_k d_k / sum_k w_k`` as float32 (FedAvg's weighted mean).

        Raises
        ------
        ValueError
            The total weight is zero.
        """
        if self.total_weight <= 0:
            raise ValueError("cannot take the mean: the total weight is zero")
        return fixed_denominator_mean(self.weighted_sum, self.total_weight)

    def fixed_denominator_mean(self, denominator: float) -> Tensors:
        """Return ``sum_k w_k d_k / D`` with a denominator ``D`` fixed in advance (DP-FedAvg [4]).

        Parameters
        ----------
        denominator : float
            ``D`` > 0, independent of which sites took part (e.g. ``q * W``, the expected weight).
        """
        return fixed_denominator_mean(self.weighted_sum, denominator)


def fixed_denominator_mean(weighted_sum: Mapping[str, NDArray[np.floating]], denominator: float) -> Tensors:
    """Return ``weighted_sum / D`` as float32, for a denominator ``D`` fixed before the round.

    DP-FedAvg's estimator (McMahan et al. 2018 [4], ``f_f``): dividing by a data-independent
    ``D = q W`` instead of the realized total weight keeps the sensitivity at ``S / D``. Applied to a
    noised sum, this is the last step of the DP mechanism; secure aggregation will also hand its
    decoded sum to this function.

    Parameters
    ----------
    weighted_sum : mapping of str to ndarray
        ``sum_k w_k d_k`` (possibly noised).
    denominator : float
        ``D`` > 0.

    Returns
    -------
    dict of str to float32 ndarray
        The mean update.

    Examples
    --------
    >>> import numpy as np
    >>> fixed_denominator_mean({"w": np.array([3.0, 6.0])}, 4.0)["w"].tolist()
    [0.75, 1.5]
    """
    if not (math.isfinite(denominator) and denominator > 0):
        raise ValueError(f"denominator must be a finite positive number, got {denominator!r}")
    return {
        name: (_as_float64(weighted_sum[name]) / denominator).astype(np.float32)
        for name in sorted(weighted_sum)
    }


@dataclass(frozen=True)
class ServerOptimizer:
    """The server-side update rule and its hyper-parameters (a plan setting, not state).

    Parameters
    ----------
    name : {"fedavg", "fedprox", "fedadam", "fedyogi"}
        FedAvg and FedProx apply ``x <- x + eta * d``; FedProx differs only at the sites, which add
        ``(mu / 2) * ||w - w_global||^2`` to their loss (Li et al. [2]; ``mu`` is the plan's
        ``proximal_mu``). FedAdam and FedYogi follow Reddi et al. [3], Algorithm 2.
    server_lr : float
        ``eta`` > 0. Defaults per strategy are in :data:`DEFAULT_SERVER_LR`
        (see :func:`make_server_optimizer`).
    beta1 : float, optional
        First-moment decay ``beta_1`` in [0, 1), adaptive strategies only (default 0.9).
    beta2 : float, optional
        Second-moment decay ``beta_2`` in [0, 1), adaptive strategies only (default 0.99).
    tau : float, optional
        Adaptivity ``tau`` > 0, adaptive strategies only (default 1e-3, Reddi et al.'s value;
        Flower's older ``server/strategy/fedadam.py`` uses 1e-9).
    """

    name: StrategyName
    server_lr: float
    beta1: float = DEFAULT_BETA1
    beta2: float = DEFAULT_BETA2
    tau: float = DEFAULT_TAU

    def __post_init__(self) -> None:
        if self.name not in STRATEGY_NAMES:
            raise ValueError(f"unknown strategy {self.name!r}; choose one of {', '.join(STRATEGY_NAMES)}")
        if not (math.isfinite(self.server_lr) and self.server_lr > 0):
            raise ValueError(f"server_lr must be a finite positive number, got {self.server_lr!r}")
        for label, value in (("beta1", self.beta1), ("beta2", self.beta2)):
            if not (0.0 <= value < 1.0):
                raise ValueError(f"{label} must be in [0, 1), got {value!r}")
        if not (math.isfinite(self.tau) and self.tau > 0):
            raise ValueError(f"tau must be a finite positive number, got {self.tau!r}")

    @property
    def adaptive(self) -> bool:
        """Whether the rule keeps moments ``m`` and ``v`` (FedAdam, FedYogi)."""
        return self.name in ("fedadam", "fedyogi")


def make_server_optimizer(
    name: StrategyName,
    *,
    server_lr: float | None = None,
    beta1: float = DEFAULT_BETA1,
    beta2: float = DEFAULT_BETA2,
    tau: float = DEFAULT_TAU,
) -> ServerOptimizer:
    """Build a :class:`ServerOptimizer`, taking ``server_lr`` from :data:`DEFAULT_SERVER_LR` if omitted.

    Parameters
    ----------
    name : {"fedavg", "fedprox", "fedadam", "fedyogi"}
        The strategy.
    server_lr : float, optional
        ``eta``; default per strategy (1 for FedAvg/FedProx, 1e-2 for FedAdam/FedYogi).
    beta1, beta2, tau : float, optional
        Adaptive hyper-parameters (defaults 0.9, 0.99, 1e-3).

    Returns
    -------
    ServerOptimizer
        The validated settings.

    Examples
    --------
    >>> make_server_optimizer("fedadam").server_lr
    0.01
    """
    if name not in DEFAULT_SERVER_LR:
        raise ValueError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGY_NAMES)}")
    lr = DEFAULT_SERVER_LR[name] if server_lr is None else server_lr
    return ServerOptimizer(name=name, server_lr=lr, beta1=beta1, beta2=beta2, tau=tau)


@dataclass(frozen=True)
class OptimizerState:
    """Server optimizer state between rounds: the moments of FedAdam / FedYogi.

    Parameters
    ----------
    step : int
        Number of server steps taken so far (informational: Reddi's algorithm has no bias
        correction, so the update does not depend on it).
    m : dict of str to float32 ndarray
        First moment ``m``; empty for FedAvg / FedProx.
    v : dict of str to float32 ndarray
        Second moment ``v``; empty for FedAvg / FedProx.
    """

    step: int = 0
    m: Tensors = field(default_factory=dict)
    v: Tensors = field(default_factory=dict)


def init_optimizer_state(
    optimizer: ServerOptimizer, reference_shapes: Mapping[str, tuple[int, ...]]
) -> OptimizerState:
    """Return the state before the first server step.

    For FedAdam and FedYogi, ``m_{-1} = 0`` and ``v_{-1} = tau**2``: Reddi et al. [3], Algorithm 2,
    require ``v_{-1} >= tau**2``, and ``tau**2`` is the smallest allowed value. (Flower starts from
    ``v = 0``; that departure from the paper is not copied.)

    Parameters
    ----------
    optimizer : ServerOptimizer
        The rule.
    reference_shapes : mapping of str to tuple of int
        The model's tensor names and shapes.

    Returns
    -------
    OptimizerState
        Step 0; empty moments for FedAvg / FedProx.

    Examples
    --------
    >>> s = init_optimizer_state(make_server_optimizer("fedyogi", tau=0.5), {"w": (2,)})
    >>> s.m["w"].tolist(), s.v["w"].tolist()
    ([0.0, 0.0], [0.25, 0.25])
    """
    if not optimizer.adaptive:
        return OptimizerState()
    shapes = sorted(reference_shapes.items())
    return OptimizerState(
        step=0,
        m={name: np.zeros(shape, dtype=np.float32) for name, shape in shapes},
        v={name: np.full(shape, optimizer.tau**2, dtype=np.float32) for name, shape in shapes},
    )


def fedavg_step(
    global_model: Mapping[str, NDArray[np.floating]],
    mean_delta: Mapping[str, NDArray[np.floating]],
    server_lr: float = DEFAULT_SERVER_LR["fedavg"],
) -> Tensors:
    """Apply ``x <- x + eta * d`` (FedAvg [1], FedProx [2]; with ``eta = 1`` the mean of the local models).

    Parameters
    ----------
    global_model : mapping of str to ndarray
        ``x``, the current global model.
    mean_delta : mapping of str to ndarray
        ``d``, the aggregated update, same names and shapes.
    server_lr : float, optional
        ``eta`` (default 1).

    Returns
    -------
    dict of str to float32 ndarray
        The new global model (computed in float64).

    Examples
    --------
    >>> import numpy as np
    >>> fedavg_step({"w": np.array([1.0], np.float32)}, {"w": np.array([0.5], np.float32)})["w"].tolist()
    [1.5]
    """
    check_same_structure(global_model, mean_delta, "aggregated update")
    return {
        name: (_as_float64(global_model[name]) + server_lr * _as_float64(mean_delta[name])).astype(np.float32)
        for name in sorted(global_model)
    }


def _adaptive_step(
    rule: Literal["adam", "yogi"],
    global_model: Mapping[str, NDArray[np.floating]],
    mean_delta: Mapping[str, NDArray[np.floating]],
    state: OptimizerState,
    *,
    server_lr: float,
    beta1: float,
    beta2: float,
    tau: float,
) -> tuple[Tensors, OptimizerState]:
    check_same_structure(global_model, mean_delta, "aggregated update")
    check_same_structure(global_model, state.m, "optimizer state m")
    check_same_structure(global_model, state.v, "optimizer state v")
    new_x: Tensors = {}
    new_m: Tensors = {}
    new_v: Tensors = {}
    for name in sorted(global_model):
        d = _as_float64(mean_delta[name])
        d2 = d * d
        m = beta1 * _as_float64(state.m[name]) + (1.0 - beta1) * d
        v_prev = _as_float64(state.v[name])
        if rule == "adam":
            v = beta2 * v_prev + (1.0 - beta2) * d2  # FedAdam
        else:
            v = v_prev - (1.0 - beta2) * d2 * np.sign(v_prev - d2)  # FedYogi
        # x <- x + eta * m / (sqrt(v) + tau). No bias correction: Flower multiplies eta by
        # sqrt(1 - beta2^t) / (1 - beta1^t) (Kingma & Ba 2014); Reddi et al. do not, and neither do we.
        # m and v are rounded to float32 before use, so the step applied equals the step a rerun from
        # the persisted (float32) state would apply.
        m32 = m.astype(np.float32)
        v32 = v.astype(np.float32)
        x = _as_float64(global_model[name]) + server_lr * _as_float64(m32) / (np.sqrt(_as_float64(v32)) + tau)
        new_x[name] = x.astype(np.float32)
        new_m[name] = m32
        new_v[name] = v32
    return new_x, OptimizerState(step=state.step + 1, m=new_m, v=new_v)


def fedadam_step(
    global_model: Mapping[str, NDArray[np.floating]],
    mean_delta: Mapping[str, NDArray[np.floating]],
    state: OptimizerState,
    *,
    server_lr: float = DEFAULT_SERVER_LR["fedadam"],
    beta1: float = DEFAULT_BETA1,
    beta2: float = DEFAULT_BETA2,
    tau: float = DEFAULT_TAU,
) -> tuple[Tensors, OptimizerState]:
    """Apply one FedAdam server step (Reddi et al. 2021 [3], Algorithm 2).

    ``m <- b1 m + (1 - b1) d``; ``v <- b2 v + (1 - b2) d**2``; ``x <- x + eta m / (sqrt(v) + tau)``,
    element-wise, with ``d`` the aggregated update.

    Parameters
    ----------
    global_model : mapping of str to ndarray
        ``x``.
    mean_delta : mapping of str to ndarray
        ``d``.
    state : OptimizerState
        ``m`` and ``v`` from the previous round (:func:`init_optimizer_state` before the first).
    server_lr, beta1, beta2, tau : float, optional
        ``eta`` (default 1e-2), ``b1`` (0.9), ``b2`` (0.99), ``tau`` (1e-3).

    Returns
    -------
    new_model : dict of str to float32 ndarray
        The new ``x``.
    new_state : OptimizerState
        The new ``m``, ``v`` (float32) and ``step + 1``. The input state is not modified.

    Notes
    -----
    Departure from Flower, not from the paper: no Adam bias correction (see the comment in the
    code), and ``v`` starts at ``tau**2`` rather than 0.

    Examples
    --------
    >>> import numpy as np
    >>> x = {"w": np.array([0.0], np.float32)}
    >>> s = init_optimizer_state(make_server_optimizer("fedadam", tau=2.0), {"w": (1,)})  # v = tau**2 = 4
    >>> x1, s1 = fedadam_step(x, {"w": np.array([2.0], np.float32)}, s, server_lr=1.0,
    ...                       beta1=0.5, beta2=0.75, tau=2.0)
    >>> x1["w"].tolist(), s1.m["w"].tolist(), s1.v["w"].tolist()
    ([0.25], [1.0], [4.0])
    """
    return _adaptive_step(
        "adam", global_model, mean_delta, state, server_lr=server_lr, beta1=beta1, beta2=beta2, tau=tau
    )


def fedyogi_step(
    global_model: Mapping[str, NDArray[np.floating]],
    mean_delta: Mapping[str, NDArray[np.floating]],
    state: OptimizerState,
    *,
    server_lr: float = DEFAULT_SERVER_LR["fedyogi"],
    beta1: float = DEFAULT_BETA1,
    beta2: float = DEFAULT_BETA2,
    tau: float = DEFAULT_TAU,
) -> tuple[Tensors, OptimizerState]:
    """Apply one FedYogi server step (Reddi et al. 2021 [3], Algorithm 2).

    As :func:`fedadam_step` but ``v <- v - (1 - b2) d**2 sign(v - d**2)``: ``v`` moves towards
    ``d**2`` by a step of ``(1 - b2) d**2`` instead of decaying geometrically, so it neither grows
    nor shrinks when ``d = 0``.

    Parameters
    ----------
    global_model : mapping of str to ndarray
        ``x``.
    mean_delta : mapping of str to ndarray
        ``d``.
    state : OptimizerState
        ``m`` and ``v`` from the previous round.
    server_lr, beta1, beta2, tau : float, optional
        ``eta`` (default 1e-2), ``b1`` (0.9), ``b2`` (0.99), ``tau`` (1e-3).

    Returns
    -------
    new_model : dict of str to float32 ndarray
        The new ``x``.
    new_state : OptimizerState
        The new ``m``, ``v`` and ``step + 1``.

    Examples
    --------
    >>> import numpy as np
    >>> x = {"w": np.array([0.0], np.float32)}
    >>> s = OptimizerState(0, {"w": np.zeros(1, np.float32)}, {"w": np.full(1, 4.0, np.float32)})
    >>> _, s1 = fedyogi_step(x, {"w": np.array([0.0], np.float32)}, s, beta2=0.75, tau=2.0)
    >>> s1.v["w"].tolist()
    [4.0]
    """
    return _adaptive_step(
        "yogi", global_model, mean_delta, state, server_lr=server_lr, beta1=beta1, beta2=beta2, tau=tau
    )


def server_step(
    optimizer: ServerOptimizer,
    global_model: Mapping[str, NDArray[np.floating]],
    mean_delta: Mapping[str, NDArray[np.floating]],
    state: OptimizerState,
) -> tuple[Tensors, OptimizerState]:
    """Apply the server optimizer named by ``optimizer`` to the aggregated update.

    Parameters
    ----------
    optimizer : ServerOptimizer
        The rule and its hyper-parameters.
    global_model : mapping of str to ndarray
        ``x``.
    mean_delta : mapping of str to ndarray
        ``d``, the (possibly noised) mean update.
    state : OptimizerState
        The state from the previous round.

    Returns
    -------
    new_model : dict of str to float32 ndarray
        The new global model.
    new_state : OptimizerState
        The new state (``step + 1``; moments empty for FedAvg / FedProx).

    Examples
    --------
    >>> import numpy as np
    >>> opt = make_server_optimizer("fedavg")
    >>> x0, d = {"w": np.zeros(1, np.float32)}, {"w": np.ones(1, np.float32)}
    >>> x, s = server_step(opt, x0, d, OptimizerState())
    >>> x["w"].tolist(), s.step
    ([1.0], 1)
    """
    if optimizer.name in ("fedavg", "fedprox"):
        return fedavg_step(global_model, mean_delta, optimizer.server_lr), OptimizerState(step=state.step + 1)
    step = fedadam_step if optimizer.name == "fedadam" else fedyogi_step
    return step(
        global_model,
        mean_delta,
        state,
        server_lr=optimizer.server_lr,
        beta1=optimizer.beta1,
        beta2=optimizer.beta2,
        tau=optimizer.tau,
    )
