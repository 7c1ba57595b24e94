"""Truncated BPTT over parallel streams, and checkpointed BPTT's exact gradient in little memory."""
import numpy as np

import bptt
from bptt import through_time as tt

rng = np.random.default_rng(0)
T, B = 3000, 8                                       # 8 streams of a noisy sum of two sines
t = np.arange(T + 1)[:, None] + rng.uniform(0, 100, B)
signal = (np.sin(0.07 * t) + 0.5 * np.sin(0.23 * t) + 0.05 * rng.standard_normal((T + 1, B))).astype(np.float32)
x, y = signal[:-1, :, None], signal[1:, :, None]     # predict the next value
model = bptt.Model("gru", 1, 32, 1, seed=0)

print("update  loss")
for step, (loss, grads, state) in enumerate(tt.truncated(model, x, y, k1=25, k2=50)):
    for name, g in grads.items():                    # plain SGD
        model.params[name] -= 0.5 * g
    if step % 20 == 0:
        print(f"{step:6d}  {loss:.4f}")

m64 = model.astype("float64")
full = tt.full(m64, x[:1000].astype(np.float64), y[:1000].astype(np.float64))
ckpt = tt.checkpointed(m64, x[:1000].astype(np.float64), y[:1000].astype(np.float64), budget=64)
err = max(np.abs(ckpt[1][k] - full[1][k]).max() / np.abs(full[1][k]).max() for k in full[1])
print(f"checkpointed (64 steps of tape) vs full BPTT over 1000 steps: relative error {err:.1e}")
