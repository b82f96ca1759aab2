"""Model.overflow_watch: the rows whose final residual overflows fp32, all 7 families."""
import torch


def test_overflow_watch_flags_exactly_the_overflowing_rows(tiny):
    enc = tiny.encode(["hello there", "abc", "xyz"], padding_side="left")
    big = torch.zeros(3, 1, tiny.d_model)
    big[1] = 1e30   # finite, but its square overflows fp32: the final norm is meaningless
    big[2] = 1e10   # large, still fine
    with tiny.hooks([(f"L{tiny.n_layers - 1}.resid_post", lambda act, site: act + big)]), \
            tiny.overflow_watch() as rows:
        tiny.forward(enc["input_ids"], enc["attention_mask"])
    assert len(rows) == 1 and rows[0].tolist() == [False, True, False]
