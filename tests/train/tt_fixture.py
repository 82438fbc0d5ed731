"""tt_fixture.py — the inputs the training-run drivers (test_runs.py, test_reliability.py)
give tt_dpo: a tiny random model written by the embedded task's own writer at a smaller
size, 16 random preference pairs with a per-example and a per-token field, and a
two-prompt evaluation set. make(scratch) writes them and returns (model, data, eval)."""
import json
import os
import random
import sys


def make(scratch):
    sys.dont_write_bytecode = True  # nothing written into the source tree
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                    "tools"))
    import make_task

    model = os.path.join(scratch, "model")
    cfg = dict(make_task.CONFIG)
    cfg.update({"hidden_size": 16, "intermediate_size": 24, "num_hidden_layers": 2,
                "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 8})
    make_task.CONFIG = cfg
    make_task.make_model(model, 3, std=0.3)
    data = os.path.join(scratch, "pairs.jsonl")
    rng = random.Random(5)
    with open(data, "w") as f:
        for i in range(16):
            p = [1] + [rng.randrange(4, 32) for _ in range(rng.randrange(2, 5))]
            c = [rng.randrange(4, 32) for _ in range(rng.randrange(1, 4))] + [2]
            r = [rng.randrange(4, 32) for _ in range(rng.randrange(1, 4))] + [2]
            f.write(json.dumps({"prompt": p, "chosen": c, "rejected": r, "margin": i % 3,
                                "chosen_scores": [0.5] * len(c)}) + "\n")
    evals = os.path.join(scratch, "eval.jsonl")
    with open(evals, "w") as f:
        f.write('{"prompt":[1,5,6],"answer":[7,8]}\n{"prompt":[1,9],"answer":[4,2]}\n')
    return model, data, evals
