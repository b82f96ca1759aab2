"""One module per op, named as the op: its contract (the docstring), argument checks, the torch
reference face and the public function that picks a face per call (`emofast.kernels.dispatch`).
The Triton faces live in `emofast.kernels.triton`, the C++ faces in `emofast.kernels.cpp`.
"""
