"""Sequence classification: 8x8 handwritten digits read row by row, one label per sequence,
with variational recurrent dropout in training and none at test time.

    pip install -e '.[data]'          # scikit-learn ships the images
    python examples/classify_digits.py
"""
import numpy as np

import bptt
from bptt.train.optim import make_optimizer
from bptt.train.tasks import DigitsTask

task = DigitsTask(seq_len=8)                         # x_t: row t of the image (8 values)
model = bptt.Model("lstm", 8, 64, 10, head="softmax", loss="cross_entropy", outputs="last",
                   recurrent_dropout=0.1, seed=0)
optimizer = make_optimizer("adam", model.params, lr=3e-3)
rng = np.random.default_rng(0)

for step in range(1, 1501):
    x, labels = task.batch(rng, 32)                  # x (8, 32, 8), labels (32,)
    masks = model.draw_masks(8, 32, rng)             # one recurrent mask per sequence
    loss, grads, _ = model.loss_and_grads(x, labels, masks=masks)
    optimizer.step(grads, 3e-3 * 0.5 * (1 + np.cos(np.pi * step / 1500)))
    if step % 500 == 0:
        x_val, y_val = task.split("valid")
        y, _ = model.forward(x_val)                  # no masks: no dropout
        print(f"update {step}: training loss {loss:.3f}, validation accuracy {(y.argmax(-1) == y_val).mean():.3f}")

x_test, y_test = task.split("test")
y, _ = model.forward(x_test)
print(f"test accuracy: {(y.argmax(-1) == y_test).mean():.3f} on {len(y_test)} images")
