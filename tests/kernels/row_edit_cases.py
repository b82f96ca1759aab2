"""Bad-input cases the two row-edit ops (masked_ablate, steer_add) share: the checks of
emofast.kernels.checks, on a good call of B = 2 rows, T = 3 positions, V = 2 variants, 8
features."""
import torch


def shared_bad(first: str, shape: str) -> list[tuple[dict, str]]:
    """(overrides of the good call, error fragment); `first` names the edited tensor argument
    and `shape` its dimensions, e.g. ("x", "[B, T, W]")."""
    return [
        ({first: torch.randn(2, 8)}, rf"{first} must be a \{shape[:-1]}\]"),
        ({first: torch.randn(2, 3, 8, dtype=torch.float64)}, "float32, bfloat16 or float16"),
        (dict(row_variant=torch.zeros(3, dtype=torch.long)), r"row_variant must be \[B\] = \[2\]"),
        (dict(row_variant=torch.zeros(2)), "row_variant must be int32 or int64"),
        (dict(row_variant=torch.tensor([0, 2])), r"row_variant values .* \[0, V = 2\)"),
        (dict(pos_start=torch.tensor([0, 4])), r"pos_start values must lie in \[0, T = 3\]"),
        (dict(pos_start=torch.zeros(2)), "pos_start must be int32 or int64"),
    ]
