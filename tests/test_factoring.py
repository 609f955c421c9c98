import torch

from adafactor.factoring import col_shape, factored_dims, row_shape, state_dtype, state_layout


def test_matrix_factors_rows_and_columns():
    assert factored_dims((7, 5), "largest", 2) == (0, 1)
    assert factored_dims((7, 5), "last", 2) == (0, 1)
    assert row_shape((7, 5), (0, 1)) == (7, 1)
    assert col_shape((7, 5), (0, 1)) == (1, 5)


def test_conv_kernel_largest_vs_last():
    shape = (256, 128, 3, 3)
    assert factored_dims(shape, "largest", 2) == (0, 1)
    assert factored_dims(shape, "last", 2) == (2, 3)
    numbers = {}
    for rule in ("largest", "last"):
        layout = state_layout(
            shape,
            torch.float32,
            factored=True,
            factor_dims=rule,
            min_dim_size_to_factor=2,
            momentum=False,
        )
        numbers[rule] = sum(
            torch.Size(s.shape).numel() for k, s in layout.items() if k.startswith("exp")
        )
    assert numbers["largest"] == 256 * 9 + 128 * 9
    assert numbers["last"] == 2 * 256 * 128 * 3
    assert numbers["largest"] < numbers["last"] < 256 * 128 * 9


def test_largest_breaks_ties_by_position_and_keeps_order():
    assert factored_dims((4, 9, 9), "largest", 2) == (1, 2)
    assert factored_dims((9, 4, 9), "largest", 2) == (0, 2)
    assert factored_dims((9, 9, 9), "largest", 2) == (0, 1)


def test_small_and_low_rank_shapes_are_not_factored():
    assert factored_dims((), "largest", 2) is None
    assert factored_dims((10,), "largest", 2) is None
    assert factored_dims((1, 10), "largest", 2) is None
    assert factored_dims((0, 10), "largest", 2) is None
    assert factored_dims((100, 100), "largest", 128) is None
    assert factored_dims((2, 2), "largest", 2) == (0, 1)


def test_state_layout_is_sublinear_and_float32_for_16_bit():
    layout = state_layout(
        (1000, 300),
        torch.bfloat16,
        factored=True,
        factor_dims="largest",
        min_dim_size_to_factor=2,
        momentum=False,
    )
    assert set(layout) == {"step", "nonfinite_skips", "exp_avg_sq_row", "exp_avg_sq_col"}
    assert layout["exp_avg_sq_row"].shape == (1000, 1)
    assert layout["exp_avg_sq_col"].shape == (1, 300)
    assert layout["exp_avg_sq_row"].dtype == torch.float32
    assert state_dtype(torch.float16) == torch.float32
    assert state_dtype(torch.float64) == torch.float64
    with_momentum = state_layout(
        (1000, 300),
        torch.float32,
        factored=True,
        factor_dims="largest",
        min_dim_size_to_factor=2,
        momentum=True,
    )
    assert with_momentum["exp_avg"].shape == (1000, 300)
