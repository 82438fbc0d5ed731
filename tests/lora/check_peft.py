"""check_peft.py — poc's LoRA against PEFT's own code (peft, transformers, torch):

  a  poc trains examples/lora_dpo.po a few steps; PeftModel.from_pretrained(base, ckpt)
     gives per-token log-probs equal to `poc logp BASE --adapter ckpt` (1e-4 on cpu64;
     3e-4 on the float32 cpu device, whose token log-probs carry their logits' float32
     rounding through four layers, as tests/wpo/check_head.py allows), and the
     adapters moved away from PEFT's initialisation (B = 0)
  b  an adapter made by peft (get_peft_model + save_pretrained, random nonzero B, some
     targets only) scored by `poc logp --adapter` equals peft's log-probs, `poc generate
     --adapter` decodes peft's greedy tokens; a .po with
     lora(..., adapter=DIR) starts from it (with lr 0 the checkpoint holds it unchanged)
  c  `poc merge BASE ADAPTER -o DIR` loads in transformers and matches peft's
     merge_and_unload() log-probs
  d  bad adapters (a wrong shape, an unknown target, a missing file) are errors naming
     the file (and tensor) from logp, merge and training, with nothing written
  e  a LoRA run resumed from its step-2 checkpoint ends with the same adapter and AdamW
     state, byte for byte, as an uninterrupted one; a damaged newest checkpoint is
     skipped for the one before it
"""
import argparse
import json
import os
import shutil
import subprocess
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from pycheck import check, finish, need  # noqa: E402

why = need("torch", "transformers", "safetensors", "peft")
if why:
    print("SKIP:", why)
    sys.exit(77)

import torch  # noqa: E402
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--poc", required=True)
ap.add_argument("--root", required=True)
ap.add_argument("--scratch", required=True)
args = ap.parse_args()
ROOT = args.root
BASE = os.path.join(ROOT, "examples/tiny")
S = args.scratch
shutil.rmtree(S, ignore_errors=True)
os.makedirs(S)
ENV = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")


def run(cmd, cwd=ROOT, ok=True):
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=ENV)
    if ok and p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {p.returncode}:\n{p.stderr}")
    return p


# a few pairs of the bundled data: both responses of each are scored
DATA = os.path.join(S, "pairs.jsonl")
with open(os.path.join(ROOT, "examples/data/pairs.jsonl")) as f:
    rows = [json.loads(next(f)) for _ in range(12)]
with open(DATA, "w") as f:
    for r in rows:
        f.write(json.dumps({"prompt": r["prompt"], "chosen": r["chosen"],
                            "rejected": r["rejected"]}) + "\n")


def base_model():
    m = AutoModelForCausalLM.from_pretrained(BASE, torch_dtype=torch.float64,
                                             attn_implementation="eager")
    m.eval()
    return m


def hf_logps(model):
    """per-token log-probs of every row's chosen and rejected, float64"""
    out = []
    for r in rows:
        for k in ("chosen", "rejected"):
            ids = torch.tensor([r["prompt"] + r[k]])
            with torch.no_grad():
                lp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
            n = len(r["prompt"])
            out.append([lp[n - 1 + j, t].item() for j, t in enumerate(r[k])])
    return out


def poc_logps(extra, backend="cpu"):
    p = run([args.poc, "logp", BASE, DATA, "--backend", backend] + extra)
    out = []
    for line in p.stdout.splitlines():
        o = json.loads(line)
        out += [o["chosen"]["tokens"], o["rejected"]["tokens"]]
    return out


def max_diff(a, b):
    if len(a) != len(b) or any(len(x) != len(y) for x, y in zip(a, b)):
        return float("inf")
    return max(abs(x - y) for u, v in zip(a, b) for x, y in zip(u, v))


def train(po, out, extra=()):
    return run([args.poc, "run", po, "--backend", "cpu", "--out", out] + list(extra), ok=False)


# ---- a: a poc-trained adapter in peft -------------------------------------------------
po = os.path.join(ROOT, "examples/lora_dpo.po")
out_a = os.path.join(S, "run_a")
p = train(po, out_a, ["--steps", "3"])
check(p.returncode == 0, f"a: lora_dpo.po trains (rc {p.returncode}): {p.stderr[-800:]}")
ck = os.path.join(out_a, "ckpt-3")
files = sorted(os.listdir(ck)) if os.path.isdir(ck) else []
check(files == ["adapter_config.json", "adapter_model.safetensors", "optimizer.safetensors",
                "state.json"], f"a: checkpoint files {files}")
if "adapter_model.safetensors" in files:
    sd = load_file(os.path.join(ck, "adapter_model.safetensors"))
    check(any(k.endswith("layers.0.self_attn.q_proj.lora_A.weight") for k in sd) and
          all(k.startswith("base_model.model.model.layers.") for k in sd),
          f"a: PEFT's key names ({sorted(sd)[:2]})")
    bmax = max(v.abs().max().item() for k, v in sd.items() if "lora_B" in k)
    check(bmax > 0, "a: training moved lora_B away from 0")
    peft_a = PeftModel.from_pretrained(base_model(), ck)
    peft_a.eval()
    ref = hf_logps(peft_a)
    got = poc_logps(["--adapter", ck])
    d = max_diff(ref, got)
    check(d < 3e-4, f"a: poc logp --adapter vs peft: max diff {d:.3g}")
    d64 = max_diff(ref, poc_logps(["--adapter", ck], "cpu64"))
    # (transformers computes RoPE's angles in float32 even for a float64 model: about 2e-5
    # of the difference is there with no adapter at all)
    check(d64 < 1e-4, f"a: poc logp --adapter on cpu64 vs peft (float64): max diff {d64:.3g}")
    d0 = max_diff(hf_logps(base_model()), got)
    check(d0 > 1e-4, f"a: the adapter changes the log-probs ({d0:.3g})")
    print(f"a: per-token log-probs, poc vs peft: max |diff| {d:.2e} (cpu64: {d64:.2e}; "
          f"vs the base: {d0:.2e})")

# ---- b: a peft-made adapter in poc ----------------------------------------------------
ad_b = os.path.join(S, "peft_adapter")
torch.manual_seed(3)
pm = get_peft_model(base_model(), LoraConfig(r=4, lora_alpha=12, lora_dropout=0.0,
                                             target_modules=["q_proj", "v_proj", "down_proj"],
                                             task_type="CAUSAL_LM"))
with torch.no_grad():
    for n, prm in pm.named_parameters():
        if "lora_B" in n:
            prm.copy_(torch.randn_like(prm) * 0.2)
pm.save_pretrained(ad_b)
pm.eval()
ref_b = hf_logps(pm)
got_b = poc_logps(["--adapter", ad_b])
d = max_diff(ref_b, got_b)
check(d < 3e-4, f"b: peft-made adapter: poc logp --adapter vs peft: max diff {d:.3g}")
d64 = max_diff(ref_b, poc_logps(["--adapter", ad_b], "cpu64"))
check(d64 < 1e-4, f"b: peft-made adapter on cpu64: max diff {d64:.3g}")
print(f"b: peft-made adapter (r 4, q v down): max |diff| {d:.2e} (cpu64: {d64:.2e})")
# greedy generation with the adapter: poc generate --adapter against peft's generate
prompt = rows[0]["prompt"]
with torch.no_grad():
    hf_new = pm.generate(input_ids=torch.tensor([prompt]), max_new_tokens=8, do_sample=False,
                         pad_token_id=0)[0][len(prompt):].tolist()
pg = run([args.poc, "generate", BASE, "--prompt-ids", ",".join(map(str, prompt)), "--tokens", "8",
          "--adapter", ad_b, "--backend", "cpu"])
poc_new = json.loads(pg.stdout)["tokens"]
check(poc_new == hf_new, f"b: greedy tokens with the adapter: poc {poc_new}, peft {hf_new}")
# training starts from it: with lr 0 the checkpoint holds it unchanged
po_b = os.path.join(S, "from_adapter.po")
with open(po) as f:
    src = f.read()
src_b = src.replace('policy  = lora(model("examples/tiny"), r = 16, alpha = 32, dropout = 0.05,\n'
                    '               targets = [q, k, v, o, gate, up, down])',
                    f'policy  = lora(model("examples/tiny"), dropout = 0.05, adapter = "{ad_b}")')
check(src_b != src, "b: the .po was rewritten")
with open(po_b, "w") as f:
    f.write(src_b.replace("examples/", os.path.join(ROOT, "examples") + "/"))
out_b = os.path.join(S, "run_b")
p = train(po_b, out_b, ["--steps", "1", "--set", "train.lr=0"])
check(p.returncode == 0, f"b: a run from a peft adapter (rc {p.returncode}): {p.stderr[-800:]}")
ckb = os.path.join(out_b, "ckpt-1")
if os.path.isdir(ckb):
    sa, sb = load_file(os.path.join(ad_b, "adapter_model.safetensors")), \
        load_file(os.path.join(ckb, "adapter_model.safetensors"))
    same = sorted(sa) == sorted(sb) and all(torch.equal(sa[k].float(), sb[k]) for k in sa)
    check(same, "b: the run's checkpoint holds the starting adapter (lr 0)")
    cfg = json.load(open(os.path.join(ckb, "adapter_config.json")))
    check(cfg["r"] == 4 and cfg["lora_alpha"] == 12 and
          sorted(cfg["target_modules"]) == ["down_proj", "q_proj", "v_proj"],
          f"b: the adapter's settings carried over ({cfg['r']}, {cfg['lora_alpha']})")

# ---- c: poc merge ---------------------------------------------------------------------
merged = os.path.join(S, "merged")
p = run([args.poc, "merge", BASE, ad_b, "-o", merged], ok=False)
check(p.returncode == 0, f"c: poc merge (rc {p.returncode}): {p.stderr}")
if p.returncode == 0:
    mm = AutoModelForCausalLM.from_pretrained(merged, torch_dtype=torch.float64,
                                              attn_implementation="eager")
    mm.eval()
    unl = PeftModel.from_pretrained(base_model(), ad_b).merge_and_unload()
    unl.eval()
    d = max_diff(hf_logps(mm), hf_logps(unl))
    check(d < 1e-4, f"c: merged model vs peft's merge_and_unload: max diff {d:.3g}")
    d2 = max_diff(poc_logps([]), got_b)  # the base alone differs from base + adapter
    check(d2 > 1e-4, "c: the adapter matters")
    p2 = run([args.poc, "logp", merged, DATA, "--backend", "cpu"])
    got_m = [t for line in p2.stdout.splitlines() for k in ("chosen", "rejected")
             for t in [json.loads(line)[k]["tokens"]]]
    d3 = max_diff(got_m, ref_b)
    check(d3 < 3e-4, f"c: poc logp of the merged model vs peft: max diff {d3:.3g}")
    print(f"c: merged vs merge_and_unload: max |diff| {d:.2e}; poc on merged: {d3:.2e}")
    p3 = run([args.poc, "merge", BASE, ad_b, "-o", merged], ok=False)
    check(p3.returncode == 2 and "already holds a model" in p3.stderr,
          f"c: merge refuses to write over a model: {p3.stderr}")
    # a base with a tokenizer: the merged folder carries it, byte for byte
    tb = os.path.join(S, "base_tok")
    os.makedirs(tb, exist_ok=True)
    for f in ("config.json", "model.safetensors"):
        shutil.copy(os.path.join(BASE, f), tb)
    extras = {"tokenizer.json": '{"model": {"type": "WordLevel", "vocab": {}}}\n',
              "tokenizer_config.json": '{"eos_token": "</s>"}\n',
              "chat_template.jinja": "{% for m in messages %}{{ m['content'] }}{% endfor %}\n"}
    for f, text in extras.items():
        with open(os.path.join(tb, f), "w") as fh:
            fh.write(text)
    mt = os.path.join(S, "merged_tok")
    p4 = run([args.poc, "merge", tb, ad_b, "-o", mt], ok=False)
    check(p4.returncode == 0 and all(open(os.path.join(mt, f)).read() == t
                                     for f, t in extras.items() if os.path.exists(os.path.join(mt, f)))
          and all(os.path.exists(os.path.join(mt, f)) for f in extras),
          f"c: merge copies the base's tokenizer files: {p4.stderr}")


# ---- d: bad adapters --------------------------------------------------------------------
def bad_copy(name):
    d = os.path.join(S, name)
    shutil.copytree(ad_b, d)
    return d


bad = {}
d = bad_copy("bad_shape")  # lora_A of one layer with rank 5
sd = load_file(os.path.join(d, "adapter_model.safetensors"))
key = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
sd[key] = torch.zeros(5, sd[key].shape[1])
save_file(sd, os.path.join(d, "adapter_model.safetensors"))
bad["shape"] = (d, ["adapter_model.safetensors", key, "shape"])
d = bad_copy("bad_target")  # a projection poc has no such module for
c = json.load(open(os.path.join(d, "adapter_config.json")))
c["target_modules"] = ["q_proj", "v_proj", "down_proj", "lm_head"]
json.dump(c, open(os.path.join(d, "adapter_config.json"), "w"))
bad["target"] = (d, ["adapter_config.json", "lm_head"])
d = bad_copy("bad_layer")  # an adapter tensor for a layer the base lacks
sd = load_file(os.path.join(d, "adapter_model.safetensors"))
sd["base_model.model.model.layers.99.self_attn.q_proj.lora_A.weight"] = sd[key].clone()
save_file(sd, os.path.join(d, "adapter_model.safetensors"))
bad["layer"] = (d, ["adapter_model.safetensors", "layers.99"])
d = bad_copy("bad_missing")
os.remove(os.path.join(d, "adapter_model.safetensors"))
bad["missing"] = (d, ["adapter_model.safetensors"])
for what, (d, words) in bad.items():
    p = run([args.poc, "logp", BASE, DATA, "--backend", "cpu", "--adapter", d], ok=False)
    check(p.returncode == 2 and all(w in p.stderr for w in words) and not p.stdout,
          f"d: logp with a bad adapter ({what}): rc {p.returncode}, {p.stderr.strip()}")
    mo = os.path.join(S, "merged_" + what)
    p = run([args.poc, "merge", BASE, d, "-o", mo], ok=False)
    check(p.returncode == 2 and all(w in p.stderr for w in words) and not os.path.exists(mo),
          f"d: merge with a bad adapter ({what}): rc {p.returncode}, {p.stderr.strip()}")
    pob = os.path.join(S, f"bad_{what}.po")
    with open(pob, "w") as f:
        f.write(src_b.replace(ad_b, d).replace("examples/", os.path.join(ROOT, "examples") + "/"))
    ob = os.path.join(S, "run_bad_" + what)
    p = train(pob, ob, ["--steps", "1"])
    check(p.returncode == 2 and all(w in p.stderr for w in words) and not os.path.exists(ob),
          f"d: training from a bad adapter ({what}): rc {p.returncode}, {p.stderr.strip()[-400:]}")
    print(f"d: {what}: {p.stderr.strip().splitlines()[-1] if p.stderr.strip() else ''}")
# a .po with the old model(...) keywords is an error pointing at lora(...)
pol = os.path.join(S, "old.po")
with open(pol, "w") as f:
    f.write(src.replace('lora(model("examples/tiny"), r = 16, alpha = 32, dropout = 0.05,\n'
                        '               targets = [q, k, v, o, gate, up, down])',
                        'model("examples/tiny", lora_rank = 16)'))
p = run([args.poc, "check", pol], ok=False)
check(p.returncode == 2 and "lora(model(" in p.stderr,
      f"d: model(..., lora_rank=) is an error pointing at lora(...): {p.stderr}")

# ---- e: exact resume --------------------------------------------------------------------
full, part = os.path.join(S, "run_full"), os.path.join(S, "run_part")
p1 = train(po, full, ["--steps", "4", "--set", "train.ckpt_every=2"])
p2 = train(po, part, ["--steps", "2"])
p3 = run([args.poc, "run", po, "--backend", "cpu", "--resume", part, "--steps", "4"], ok=False)
check(p1.returncode == 0 and p2.returncode == 0 and p3.returncode == 0,
      f"e: runs ({p1.returncode} {p2.returncode} {p3.returncode}): {p3.stderr[-600:]}")
for fn in ("adapter_model.safetensors", "optimizer.safetensors"):
    a, b = os.path.join(full, "ckpt-4", fn), os.path.join(part, "ckpt-4", fn)
    same = os.path.exists(a) and os.path.exists(b) and open(a, "rb").read() == open(b, "rb").read()
    check(same, f"e: {fn} after a resume equals the uninterrupted run's")
# a damaged newest checkpoint (truncated adapter) is skipped for the one before it, and the
# run still ends where the uninterrupted one did
dmg = os.path.join(S, "run_damaged")
shutil.copytree(full, dmg)
with open(os.path.join(dmg, "ckpt-4", "adapter_model.safetensors"), "r+b") as f:
    f.truncate(100)
os.remove(os.path.join(dmg, ".lock")) if os.path.exists(os.path.join(dmg, ".lock")) else None
p4 = run([args.poc, "run", po, "--backend", "cpu", "--resume", dmg, "--steps", "4"], ok=False)
check(p4.returncode == 0 and "skipping" in p4.stderr and "ckpt-4" in p4.stderr,
      f"e: a damaged LoRA checkpoint is skipped: rc {p4.returncode}: {p4.stderr[-600:]}")
a, b = os.path.join(full, "ckpt-4", "adapter_model.safetensors"), \
    os.path.join(dmg, "ckpt-4", "adapter_model.safetensors")
check(os.path.exists(b) and open(a, "rb").read() == open(b, "rb").read(),
      "e: resumed from the checkpoint before the damaged one, the same adapter at step 4")
# a checkpoint whose adapter_config.json no longer matches the program's lora(...) is
# refused (skipped for the previous one), naming the file
dmg2 = os.path.join(S, "run_edited")
shutil.copytree(full, dmg2)
cfg_path = os.path.join(dmg2, "ckpt-4", "adapter_config.json")
c = json.load(open(cfg_path))
c["lora_alpha"] = 64
json.dump(c, open(cfg_path, "w"))
p5 = run([args.poc, "run", po, "--backend", "cpu", "--resume", dmg2, "--steps", "4"], ok=False)
check(p5.returncode == 0 and "adapter_config.json: r, lora_alpha or target_modules differ" in
      p5.stderr, f"e: an edited adapter_config.json is refused: {p5.stderr[-600:]}")
sys.exit(finish("lora_peft"))
