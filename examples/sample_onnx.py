"""Sample text from an exported character model with onnxruntime and NumPy alone (no bptt).

    bptt train --steps 300 --out runs/demo
    bptt export runs/demo --onnx demo.onnx
    python examples/sample_onnx.py demo.onnx --length 200 --prime "def "

The ONNX file holds its characters in the metadata entry ``bptt.vocabulary`` (a JSON list);
the graph takes x (T, B, V) one-hot, h0 (and c0 for an LSTM) and returns the softmax y and
the final state, which is fed back with the next character.
"""
import argparse
import json
import os

import numpy as np
import onnxruntime as ort


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="an ONNX file written by `bptt export RUN --onnx FILE`")
    parser.add_argument("--length", type=int, default=300)
    parser.add_argument("--prime", default="", help="text to start from, printed before the sample "
                        "(default: a newline, not printed, or the first character where there is none)")
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not os.path.isfile(args.model):
        parser.error(f"model: no such file: {args.model}")
    if not 0 < args.temperature < np.inf or args.length < 0:
        parser.error(f"--temperature: expected a positive number, --length one >= 0; got {args.temperature}, "
                     f"{args.length}")

    runtime = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    vocabulary = runtime.get_modelmeta().custom_metadata_map.get("bptt.vocabulary")
    if vocabulary is None:
        parser.error(f"model: {args.model} has no vocabulary (not a character model); expected the export of a "
                     f"model trained on text")
    chars = json.loads(vocabulary)
    index = {c: i for i, c in enumerate(chars)}
    prime = args.prime or ("\n" if "\n" in index else chars[0])          # as bptt sample does
    unknown = sorted(set(prime) - set(index))
    if unknown:
        parser.error(f"--prime: characters not in the model's vocabulary: {''.join(unknown[:10])!r}; expected a "
                     f"text of its {len(chars)} characters")
    state_inputs = [i for i in runtime.get_inputs() if i.name in ("h0", "c0")]
    with_lengths = any(i.name == "lengths" for i in runtime.get_inputs())     # bptt export --lengths
    state = {i.name: np.zeros((i.shape[0], 1, i.shape[2]), np.float32) for i in state_inputs}
    rng = np.random.default_rng(args.seed)

    def step(codes):
        """Feed the characters ``codes``; return the last step's probabilities."""
        x = np.zeros((len(codes), 1, len(chars)), np.float32)
        x[np.arange(len(codes)), 0, codes] = 1
        lengths = {"lengths": np.array([len(codes)], np.int32)} if with_lengths else {}
        y, *final = runtime.run(None, {"x": x} | state | lengths)
        state.update(zip(("h0", "c0"), final))
        return y[-1, 0].astype(np.float64)

    p = step([index[c] for c in prime])
    out = []
    for _ in range(args.length):
        logits = np.log(np.maximum(p, 1e-30))
        with np.errstate(over="ignore", under="ignore"):    # less the largest, then / T: a tiny T is greedy
            q = np.exp((logits - logits.max()) / args.temperature)
        code = int(rng.choice(len(chars), p=q / q.sum()))
        out.append(chars[code])
        p = step([code])
    print(args.prime + "".join(out))


if __name__ == "__main__":
    main()
