"""The Triton faces of emofast's ops: imported only when a Triton face runs, so emofast.kernels and
its torch and C++ faces work where Triton is not installed.

One module per op, named as the op: its private `@triton.jit` kernels, the host launcher that
flattens to 2-D and picks block sizes, and (where the op is differentiable) its
`torch.autograd.Function`. Contracts live with the public functions in `emofast.kernels.ops`.
"""
