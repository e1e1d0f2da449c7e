from __future__ import annotations

import math

import numpy as np
import pytest

from ecgdig.federated.strategies import (
    DeltaAccumulator,
    OptimizerState,
    capped_weight,
    clip_by_l2_norm,
    fedadam_step,
    fedavg_step,
    fedyogi_step,
    global_l2_norm,
    init_optimizer_state,
    make_server_optimizer,
    server_step,
    weighted_mean,
)


def f32(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def test_fedavg_weighted_mean_equals_hand_computed_values() -> None:
    # Prepare: two sites, 1 and 3 examples.
    a = {"w": f32(1.0, 2.0), "b": np.array([[2.0]], np.float32)}
    b = {"w": f32(5.0, 6.0), "b": np.array([[6.0]], np.float32)}

    # Execute
    mean = weighted_mean([(a, 1), (b, 3)])

    # Assert: (1*[1,2] + 3*[5,6]) / 4 = [4, 5]; (1*2 + 3*6) / 4 = 5.
    np.testing.assert_array_equal(mean["w"], f32(4.0, 5.0))
    np.testing.assert_array_equal(mean["b"], np.array([[5.0]], np.float32))
    assert mean["w"].dtype == np.float32


def test_streaming_accumulator_matches_weighted_mean_in_any_order() -> None:
    # Prepare
    rng = np.random.default_rng(3)
    deltas = [({"w": rng.normal(size=(4, 5)).astype(np.float32)}, float(n)) for n in (3, 1, 7, 2)]

    # Execute
    forward = DeltaAccumulator({"w": (4, 5)})
    backward = DeltaAccumulator({"w": (4, 5)})
    for delta, weight in deltas:
        forward.add(delta, weight)
    for delta, weight in reversed(deltas):
        backward.add(delta, weight)

    # Assert
    expected = sum(w * d["w"].astype(np.float64) for d, w in deltas) / 13.0
    np.testing.assert_allclose(forward.mean()["w"], expected, rtol=1e-6)
    np.testing.assert_allclose(backward.mean()["w"], forward.mean()["w"], rtol=1e-6)
    assert forward.count == 4 and forward.total_weight == 13.0


def test_dp_capped_weights_and_fixed_denominator() -> None:
    # Prepare: n_cap = 200, sites with 50 and 500 examples -> weights 0.25 and 1.
    weights = [capped_weight(50, 200), capped_weight(500, 200)]
    acc = DeltaAccumulator({"w": (1,)})

    # Execute
    acc.add({"w": f32(4.0)}, weights[0])
    acc.add({"w": f32(2.0)}, weights[1])
    mean = acc.fixed_denominator_mean(2.0)

    # Assert: (0.25*4 + 1*2) / 2 = 1.5, whatever the realized total weight (1.25).
    assert weights == [0.25, 1.0]
    np.testing.assert_array_equal(mean["w"], f32(1.5))


def test_clipping_never_exceeds_the_bound_random_cases() -> None:
    # Prepare: many random updates across scales, shapes and bounds.
    rng = np.random.default_rng(2024)
    for _ in range(400):
        n_tensors = int(rng.integers(1, 4))
        delta = {
            f"t{i}": (
                rng.normal(size=tuple(rng.integers(1, 6, size=int(rng.integers(1, 3)))))
                * 10.0 ** rng.uniform(-4, 4)
            ).astype(np.float32)
            for i in range(n_tensors)
        }
        bound = float(10.0 ** rng.uniform(-3, 3))

        # Execute
        clipped, norm = clip_by_l2_norm(delta, bound)

        # Assert: never above S; untouched when already inside; direction kept.
        assert global_l2_norm(clipped) <= bound
        if norm <= bound:
            for name in delta:
                np.testing.assert_array_equal(clipped[name], delta[name])
        else:
            assert global_l2_norm(clipped) == pytest.approx(bound, rel=1e-6)
            for name in delta:
                np.testing.assert_allclose(clipped[name], delta[name] * (bound / norm), rtol=1e-5, atol=1e-30)


def test_clipping_zero_update_and_invalid_input() -> None:
    # Prepare
    zero = {"w": np.zeros(3, np.float32)}

    # Execute
    clipped, norm = clip_by_l2_norm(zero, 1.0)

    # Assert
    assert norm == 0.0
    np.testing.assert_array_equal(clipped["w"], zero["w"])
    with pytest.raises(ValueError, match="NaN or Inf"):
        clip_by_l2_norm({"w": f32(np.nan)}, 1.0)
    with pytest.raises(ValueError, match="clip_norm"):
        clip_by_l2_norm(zero, 0.0)


def test_structure_mismatch_is_rejected_not_broadcast() -> None:
    acc = DeltaAccumulator({"w": (3,)})
    with pytest.raises(ValueError, match=r"shape \(1,\), expected \(3,\)"):
        acc.add({"w": f32(1.0)}, 1.0)
    with pytest.raises(ValueError, match="missing tensors"):
        acc.add({"v": f32(1.0, 2.0, 3.0)}, 1.0)
    assert acc.count == 0


# Two rounds with eta = 1, b1 = 0.5, b2 = 0.75, tau = 2 (so v starts at tau^2 = 4):
#   x0 = [0, 1, 0], d1 = [2, 0, 0], d2 = [-2, 0, 4].
# FedAdam: m1 = [1, 0, 0], v1 = .75*4 + .25*d1^2 = [4, 3, 3], x1 = x0 + m1/(sqrt(v1)+2) = [0.25, 1, 0];
#          m2 = .5*m1 + .5*d2 = [-0.5, 0, 2], v2 = .75*v1 + .25*d2^2 = [4, 2.25, 6.25],
#          x2 = x1 + m2/(sqrt(v2)+2) = [0.25 - 0.5/4, 1, 2/4.5] = [0.125, 1, 4/9].
# FedYogi: v1 = v0 - .25*d1^2*sign(v0 - d1^2) = [4 - 1*0, 4, 4] (sign(0) = 0); x1 = [0.25, 1, 0];
#          v2 = [4 - 1*0, 4, 4 - 4*sign(4 - 16)] = [4, 4, 8]; x2 = [0.125, 1, 2/(sqrt(8)+2)].
HAND = {
    "fedadam": ([4.0, 3.0, 3.0], [0.25, 1.0, 0.0], [4.0, 2.25, 6.25], [0.125, 1.0, 4.0 / 9.0]),
    "fedyogi": (
        [4.0, 4.0, 4.0],
        [0.25, 1.0, 0.0],
        [4.0, 4.0, 8.0],
        [0.125, 1.0, 2.0 / (math.sqrt(8.0) + 2.0)],
    ),
}


@pytest.mark.parametrize("name", ["fedadam", "fedyogi"])
def test_adaptive_server_optimizers_match_two_hand_computed_rounds(name: str) -> None:
    # Prepare
    opt = make_server_optimizer(name, server_lr=1.0, beta1=0.5, beta2=0.75, tau=2.0)  # type: ignore[arg-type]
    x0 = {"w": f32(0.0, 1.0, 0.0)}
    state0 = init_optimizer_state(opt, {"w": (3,)})
    v1, x1_expected, v2, x2_expected = HAND[name]

    # Execute
    x1, state1 = server_step(opt, x0, {"w": f32(2.0, 0.0, 0.0)}, state0)
    x2, state2 = server_step(opt, x1, {"w": f32(-2.0, 0.0, 4.0)}, state1)

    # Assert
    np.testing.assert_array_equal(state0.v["w"], f32(4.0, 4.0, 4.0))
    np.testing.assert_allclose(state1.m["w"], [1.0, 0.0, 0.0])
    np.testing.assert_allclose(state1.v["w"], v1)
    np.testing.assert_allclose(x1["w"], x1_expected, rtol=1e-7)
    np.testing.assert_allclose(state2.m["w"], [-0.5, 0.0, 2.0])
    np.testing.assert_allclose(state2.v["w"], v2)
    np.testing.assert_allclose(x2["w"], x2_expected, rtol=1e-6)
    assert (state1.step, state2.step) == (1, 2)
    np.testing.assert_array_equal(x0["w"], f32(0.0, 1.0, 0.0))  # inputs untouched
    np.testing.assert_array_equal(state0.m["w"], f32(0.0, 0.0, 0.0))


def test_default_fedadam_hyperparameters_follow_reddi() -> None:
    opt = make_server_optimizer("fedadam")
    assert (opt.beta1, opt.beta2, opt.tau, opt.server_lr) == (0.9, 0.99, 1e-3, 1e-2)
    assert make_server_optimizer("fedavg").server_lr == 1.0


def test_fedavg_step_and_direct_step_functions_agree() -> None:
    # Prepare
    x = {"w": f32(1.0, 2.0)}
    d = {"w": f32(0.5, -1.0)}
    state = OptimizerState(0, {"w": np.zeros(2, np.float32)}, {"w": np.full(2, 1e-6, np.float32)})

    # Execute / Assert
    np.testing.assert_array_equal(fedavg_step(x, d)["w"], f32(1.5, 1.0))
    np.testing.assert_array_equal(fedavg_step(x, d, 0.5)["w"], f32(1.25, 1.5))
    adam_x, _ = fedadam_step(x, d, state)
    opt_x, _ = server_step(make_server_optimizer("fedadam"), x, d, state)
    np.testing.assert_array_equal(adam_x["w"], opt_x["w"])
    yogi_x, _ = fedyogi_step(x, d, state)
    assert np.all(np.sign(yogi_x["w"] - x["w"]) == np.sign(d["w"]))
