"""Compute a gradient by hand-derived BPTT and check it against finite differences."""
import numpy as np
import bptt

model = bptt.Model("lstm", input_size=3, hidden_size=8, output_size=2, num_layers=2, dtype="float64", seed=0)
rng = np.random.default_rng(0)
x = rng.standard_normal((20, 4, 3))                 # (T, B, D): 20 steps, 4 sequences
targets = rng.standard_normal((20, 4, 2))           # an output at every step
loss, grads, state = model.loss_and_grads(x, targets)
print(f"loss {loss:.6f}; dL/dW_h of layer 0 has shape {grads['layer0.W_h'].shape}")
print(bptt.gradcheck(model, x[:6], targets[:6]))    # finite differences vs backward, per tensor
