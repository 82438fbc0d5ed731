"""The objectives of examples/*.po, written again from SEEDS.md in plain Python.

Nothing here calls poc: these are the independent statements that `poc probe` is
checked against. Every function takes

    x     the live inputs:   {"logp": {key: [[per token] per example]},
                              "entropy": {key: ...}, "fields": {name: ...}}
    s     the same structure at the base point: stop-gradient terms read it, so a
          finite difference taken by perturbing x alone holds them fixed
    p     the knobs (param values)
    picks the 0/1 masks poc drew for pick(...), keyed as poc prints them

and returns (per_example, reports) where reports maps a report name to
("example", [one value per example]) or ("batch", value).
"""

import math

# ---- elementwise helpers (float64, stable) ----------------------------------------


def logsigmoid(z):
    # log σ(z) = -softplus(-z), without overflow for large |z|
    if z >= 0:
        return -math.log1p(math.exp(-z))
    return z - math.log1p(math.exp(z))


def log1mexp(a):
    # log(1 - e^a) for a < 0: expm1 near 0, log1p far from it
    if a > -math.log(2.0):
        return math.log(-math.expm1(a))
    return math.log1p(-math.exp(a))


def vsum(v):
    return math.fsum(v)


def vmean(v):
    return math.fsum(v) / len(v)


def cos_prefix(u, v, k):
    # cosine similarity over the common prefix of u and v, at most k tokens
    n = min(len(u), len(v), k)
    dot = math.fsum(u[t] * v[t] for t in range(n))
    nu = math.sqrt(math.fsum(u[t] * u[t] for t in range(n)))
    nv = math.sqrt(math.fsum(v[t] * v[t] for t in range(n)))
    return dot / (nu * nv)


def lp(x, key, i):
    return x["logp"][key][i]


def S(x, key, i):
    return vsum(lp(x, key, i))


def A(x, key, i):
    return vmean(lp(x, key, i))


def batch(x):
    return len(next(iter(x["logp"].values())))


def ex(values):
    return ("example", values)


def dpo_reports(beta, cr, rr):
    return {
        "rewards/chosen": ex([beta * c for c in cr]),
        "rewards/rejected": ex([beta * r for r in rr]),
        "rewards/margins": ex([beta * (c - r) for c, r in zip(cr, rr)]),
        "rewards/accuracies": ex([1.0 if c > r else 0.0 for c, r in zip(cr, rr)]),
    }


def logps_reports(x, chosen, rejected, reduce):
    """TRL's logps/chosen and logps/rejected: the policy's log-probabilities of each
    response, summed (DPO) or length-normalised (SimPO), per example."""
    B = batch(x)
    return {"logps/chosen": ex([reduce(x, chosen, i) for i in range(B)]),
            "logps/rejected": ex([reduce(x, rejected, i) for i in range(B)])}


def with_logps(rep, x, reduce, chosen="policy/chosen", rejected="policy/rejected"):
    rep.update(logps_reports(x, chosen, rejected, reduce))
    return rep


# ---- the objectives ----------------------------------------------------------------


def sft(x, s, p, picks):
    B = batch(x)
    per = [-A(x, "policy/response", i) for i in range(B)]
    return per, {"logps/response": ex([-v for v in per])}


def dpo(x, s, p, picks):
    B, beta = batch(x), p["beta"]
    cr = [S(x, "policy/chosen", i) - S(x, "ref/chosen", i) for i in range(B)]
    rr = [S(x, "policy/rejected", i) - S(x, "ref/rejected", i) for i in range(B)]
    per = [-logsigmoid(beta * (c - r)) for c, r in zip(cr, rr)]
    return per, with_logps(dpo_reports(beta, cr, rr), x, S)


def simpo(x, s, p, picks):
    B, beta, gamma = batch(x), p["beta"], p["gamma"]
    cr = [beta * A(x, "policy/chosen", i) for i in range(B)]
    rr = [beta * A(x, "policy/rejected", i) for i in range(B)]
    per = [-logsigmoid(c - r - gamma) for c, r in zip(cr, rr)]
    return per, with_logps(dpo_reports(1.0, cr, rr), x, A)


def ipo(x, s, p, picks):
    B, tau = batch(x), p["tau"]
    cr = [A(x, "policy/chosen", i) - A(x, "ref/chosen", i) for i in range(B)]
    rr = [A(x, "policy/rejected", i) - A(x, "ref/rejected", i) for i in range(B)]
    per = [((c - r) - 1.0 / (2.0 * tau)) ** 2 for c, r in zip(cr, rr)]
    # TRL's rewards for IPO: tau times the summed log-ratios
    scr = [S(x, "policy/chosen", i) - S(x, "ref/chosen", i) for i in range(B)]
    srr = [S(x, "policy/rejected", i) - S(x, "ref/rejected", i) for i in range(B)]
    rep = with_logps(dpo_reports(tau, scr, srr), x, S)
    rep["ipo/margin"] = ex([c - r for c, r in zip(cr, rr)])
    return per, rep


def cpo(x, s, p, picks):
    B, beta, lam = batch(x), p["beta"], p["lambda"]
    cr = [beta * S(x, "policy/chosen", i) for i in range(B)]
    rr = [beta * S(x, "policy/rejected", i) for i in range(B)]
    if p.get("per_example_nll", 0):
        # the mean of per-example means: each example's chosen weighs the same
        nll = ex([-A(x, "policy/chosen", i) for i in range(B)])
    else:
        # TRL's: one mean over every chosen token of the batch
        tokens = [t for i in range(B) for t in lp(x, "policy/chosen", i)]
        nll = ("batch", -vsum(tokens) / len(tokens))
    per = [-logsigmoid(c - r) + lam * (nll[1][i] if nll[0] == "example" else nll[1])
           for i, (c, r) in enumerate(zip(cr, rr))]
    rep = dpo_reports(1.0, cr, rr)
    rep["nll_loss"] = nll
    return per, rep


ORPO_PROMPT = "policy/prompt[1:]|prompt[:1]"


def orpo(x, s, p, picks):
    B, lam = batch(x), p["lambda"]
    aw = [A(x, "policy/chosen", i) for i in range(B)]
    al = [A(x, "policy/rejected", i) for i in range(B)]
    o = [(w - l) - (log1mexp(w) - log1mexp(l)) for w, l in zip(aw, al)]
    if p.get("per_example_nll", 0):
        nll = ex([-w for w in aw])
    else:
        # TRL's: one mean over every prompt token but the first and every chosen token
        tokens = [t for i in range(B)
                  for t in lp(x, ORPO_PROMPT, i) + lp(x, "policy/chosen", i)]
        nll = ("batch", -vsum(tokens) / len(tokens))
    per = [(nll[1][i] if nll[0] == "example" else nll[1]) - lam * logsigmoid(oi)
           for i, oi in enumerate(o)]
    rep = dpo_reports(lam, aw, al)
    rep["log_odds_ratio"] = ex([logsigmoid(oi) for oi in o])
    rep["log_odds_chosen"] = ex(o)
    rep["nll_loss"] = nll
    return per, rep


def rdpo(x, s, p, picks):
    B, beta, alpha = batch(x), p["beta"], p["alpha"]
    cr = [S(x, "policy/chosen", i) - S(x, "ref/chosen", i) for i in range(B)]
    rr = [S(x, "policy/rejected", i) - S(x, "ref/rejected", i) for i in range(B)]
    dlen = [float(len(lp(x, "policy/chosen", i)) - len(lp(x, "policy/rejected", i)))
            for i in range(B)]
    # Park et al.'s sign: a longer chosen response is penalised
    per = [-logsigmoid(beta * (c - r) - alpha * d) for c, r, d in zip(cr, rr, dlen)]
    rep = with_logps(dpo_reports(beta, cr, rr), x, S)
    rep["length/margin"] = ex(dlen)
    return per, rep


def two_sided(z, beta, m_l, m_r):
    return -logsigmoid(beta * (z - m_l)) - logsigmoid(beta * (m_r - z))


def stapo_reports(z, beta, m_l, m_r, x):
    B = len(z)
    return {
        "z": ex(z),
        "z/inside": ex([1.0 if (zi > m_l and zi < m_r) else 0.0 for zi in z]),
        "entropy/chosen": ex([vmean(x["entropy"]["policy/chosen"][i]) for i in range(B)]),
        "rewards/margins": ex([beta * zi for zi in z]),
    }


def stapo(x, s, p, picks):
    B, beta, m_l, m_r = batch(x), p["beta"], p["m_l"], p["m_r"]
    z = [A(x, "policy/chosen", i) - A(x, "policy/rejected", i) for i in range(B)]
    per = [two_sided(zi, beta, m_l, m_r) for zi in z]
    rep = stapo_reports(z, beta, m_l, m_r, x)
    rep["rewards/accuracies"] = ex([1.0 if zi > 0 else 0.0 for zi in z])
    rep["rewards/chosen"] = ex([beta * A(x, "policy/chosen", i) for i in range(B)])
    rep["rewards/rejected"] = ex([beta * A(x, "policy/rejected", i) for i in range(B)])
    return per, with_logps(rep, x, A)


def stapo_dpo(x, s, p, picks):
    B, beta, m_l, m_r = batch(x), p["beta"], p["m_l"], p["m_r"]
    cr = [S(x, "policy/chosen", i) - S(x, "ref/chosen", i) for i in range(B)]
    rr = [S(x, "policy/rejected", i) - S(x, "ref/rejected", i) for i in range(B)]
    z = [c - r for c, r in zip(cr, rr)]
    per = [two_sided(zi, beta, m_l, m_r) for zi in z]
    rep = stapo_reports(z, beta, m_l, m_r, x)
    rep.update(dpo_reports(beta, cr, rr))
    return per, with_logps(rep, x, S)


INS_CHOSEN = "policy/chosen|prompt,sep,rejected,sep"
INS_REJECTED = "policy/rejected|prompt,sep,chosen,sep"


def inspo(x, s, p, picks):
    B, beta = batch(x), p["beta"]
    cr = [S(x, INS_CHOSEN, i) - S(x, "ref/chosen", i) for i in range(B)]
    rr = [S(x, INS_REJECTED, i) - S(x, "ref/rejected", i) for i in range(B)]
    per = [-logsigmoid(beta * (c - r)) for c, r in zip(cr, rr)]
    return per, with_logps(dpo_reports(beta, cr, rr), x, S, INS_CHOSEN, INS_REJECTED)


def ins_simpo(x, s, p, picks):
    B, beta, gamma = batch(x), p["beta"], p["gamma"]
    cr = [beta * A(x, INS_CHOSEN, i) for i in range(B)]
    rr = [beta * A(x, INS_REJECTED, i) for i in range(B)]
    per = [-logsigmoid(c - r - gamma) for c, r in zip(cr, rr)]
    return per, with_logps(dpo_reports(1.0, cr, rr), x, A, INS_CHOSEN, INS_REJECTED)


PICK_CHOSEN = "pick(chosen,n_w)"
PICK_REJECTED = "pick(rejected,n_l)"


def sgdpo_counts(x, p, i):
    """The number of picked positions SEEDS.md's working form asks for."""
    lw = len(lp(x, "policy/chosen", i))
    ll = len(lp(x, "policy/rejected", i))
    return max(1, math.floor(p["r1"] * lw)), max(1, math.floor(p["r2"] * ll))


def sgdpo(x, s, p, picks):
    B, beta = batch(x), p["beta"]

    def ratio(inp, tgt, i):
        return [a - b for a, b in zip(lp(inp, "policy/" + tgt, i), lp(inp, "ref/" + tgt, i))]

    def pilot(tgt, mask, i):
        # detached: read at the base point s
        return vsum(m * r for m, r in zip(mask, ratio(s, tgt, i)))

    cr = [vsum(ratio(x, "chosen", i)) for i in range(B)]
    rr = [vsum(ratio(x, "rejected", i)) for i in range(B)]
    pw = [pilot("chosen", picks[PICK_CHOSEN][i], i) for i in range(B)]
    pl = [pilot("rejected", picks[PICK_REJECTED][i], i) for i in range(B)]
    per = [-0.5 * logsigmoid(beta * (cr[i] - pl[i])) - 0.5 * logsigmoid(beta * (pw[i] - rr[i]))
           for i in range(B)]
    rep = with_logps(dpo_reports(beta, cr, rr), x, S)
    rep["pilot/chosen"] = ex([beta * v for v in pw])
    rep["pilot/rejected"] = ex([beta * v for v in pl])
    return per, rep


def copo_terms(x, s, p, i, m_all):
    """L_DPO, L_RTA, L_NLL and w_RTA of example i; m_all: the detached margins."""
    beta, tau = p["beta"], p["tau"]

    def r(inp, tgt):
        return [a - b for a, b in zip(lp(inp, "policy/" + tgt, i), lp(inp, "ref/" + tgt, i))]

    r_pos, r_neg, r_a = r(x, "chosen"), r(x, "rejected"), r(x, "a")
    margin = vmean(r_pos) - vmean(r_neg)
    l_dpo = -logsigmoid(beta * margin)
    # the positive and negative trajectories are held fixed: read at the base point
    s_pos = cos_prefix(r_a, r(s, "chosen"), 8)
    s_neg = cos_prefix(r_a, r(s, "rejected"), 8)
    # InfoNCE with one positive and one negative
    e_pos, e_neg = math.exp(s_pos / tau), math.exp(s_neg / tau)
    l_rta = -math.log(e_pos / (e_pos + e_neg))
    B = len(m_all)
    mu = math.fsum(m_all) / B
    sd = math.sqrt(math.fsum((m - mu) ** 2 for m in m_all) / B)
    w_rta = p["lambda_rta"] * (m_all[i] - mu) / (sd + p["eps"])
    scores = x["fields"]["chosen_scores"][i]
    smean = vmean(scores)
    pc = lp(x, "policy/chosen", i)
    l_nll = -math.fsum(pc[t] for t in range(len(pc)) if scores[t] > smean) / len(pc)
    return l_dpo, l_rta, l_nll, w_rta, margin


def copo_margins(s):
    B = batch(s)
    out = []
    for i in range(B):
        rp = [a - b for a, b in zip(lp(s, "policy/chosen", i), lp(s, "ref/chosen", i))]
        rn = [a - b for a, b in zip(lp(s, "policy/rejected", i), lp(s, "ref/rejected", i))]
        out.append(vmean(rp) - vmean(rn))
    return out


def copo_example(x, s, p, i):
    l_dpo, l_rta, l_nll, w, margin = copo_terms(x, s, p, i, copo_margins(s))
    return l_dpo + w * l_rta + p["lambda_nll"] * l_nll


def copo(x, s, p, picks):
    B, beta = batch(x), p["beta"]
    m_all = copo_margins(s)  # m = sg(R(y+) - R(y-)), batch statistics of the detached value
    per, dp, rt, nl, margins = [], [], [], [], []
    for i in range(B):
        l_dpo, l_rta, l_nll, w, margin = copo_terms(x, s, p, i, m_all)
        per.append(l_dpo + w * l_rta + p["lambda_nll"] * l_nll)
        dp.append(l_dpo)
        rt.append(l_rta)
        nl.append(l_nll)
        margins.append(margin)
    rep = {
        "loss/dpo": ex(dp),
        "loss/rta": ex(rt),
        "loss/nll": ex(nl),
        "rewards/chosen": ex([beta * vmean([a - b for a, b in zip(lp(x, "policy/chosen", i),
                                                                   lp(x, "ref/chosen", i))])
                              for i in range(B)]),
        "rewards/rejected": ex([beta * vmean([a - b for a, b in zip(lp(x, "policy/rejected", i),
                                                                     lp(x, "ref/rejected", i))])
                                for i in range(B)]),
        "rewards/margins": ex([beta * m for m in margins]),
        "rewards/accuracies": ex([1.0 if m > 0 else 0.0 for m in margins]),
    }
    return per, with_logps(rep, x, S)


RAO_PREFIX = "prompt[1:]|prompt[:1]"


def rao(x, s, p, picks):
    B, beta, z0 = batch(x), p["beta"], p["z0"]
    reward = x["fields"]["reward"]
    per, implicit_all, sp = [], [], []
    for i in range(B):
        # log Z_i = log Z0 + sg(S(π, x'|t0) - S(ref, x'|t0)), Algorithm 1 line 6
        log_z = math.log(z0) + (S(s, "policy/" + RAO_PREFIX, i) - S(s, "ref/" + RAO_PREFIX, i))
        implicit = S(x, "policy/response", i) - S(x, "ref/response", i) + log_z
        per.append((reward[i] - beta * implicit) ** 2)
        implicit_all.append(beta * implicit)
        sp.append(S(x, "policy/response", i))
    mean_r = math.fsum(reward) / B
    high = [1.0 if r > mean_r else 0.0 for r in reward]
    chosen = math.fsum(h * v for h, v in zip(high, sp)) / max(math.fsum(high), 1.0)
    rep = {
        "logps/chosen": ("batch", chosen),
        "logps/response": ex(sp),
        "rewards/implicit": ex(implicit_all),
        "rewards/target": ex(list(reward)),
    }
    return per, rep


# ---- what each example needs -------------------------------------------------------
# logp / entropy keys with the sequence role that fixes their length, fields (None: one
# number per example; a role: one per token of it), knobs with their defaults.

PAIR_KEYS = {"policy/chosen": "chosen", "ref/chosen": "chosen",
             "policy/rejected": "rejected", "ref/rejected": "rejected"}

SPECS = {
    "sft": dict(fn=sft, logp={"policy/response": "response"}, params={}),
    "dpo": dict(fn=dpo, logp=PAIR_KEYS, params={"beta": 0.1}),
    # DPO with LoRA adapters: the objective is DPO's, the reference the adapter-free base
    "lora_dpo": dict(fn=dpo, logp=PAIR_KEYS, params={"beta": 0.1}),
    "simpo": dict(fn=simpo, logp={"policy/chosen": "chosen", "policy/rejected": "rejected"},
                  params={"beta": 2.5, "gamma": 1.4}),
    "ipo": dict(fn=ipo, logp=PAIR_KEYS, params={"tau": 0.1}),
    "cpo": dict(fn=cpo, logp={"policy/chosen": "chosen", "policy/rejected": "rejected"},
                params={"beta": 0.1, "lambda": 1.0}),
    "orpo": dict(fn=orpo, logp={"policy/chosen": "chosen", "policy/rejected": "rejected",
                                ORPO_PROMPT: "prompt[1:]"},
                 params={"lambda": 0.1}),
    "rdpo": dict(fn=rdpo, logp=PAIR_KEYS, params={"beta": 0.1, "alpha": 0.1}),
    "stapo": dict(fn=stapo, logp={"policy/chosen": "chosen", "policy/rejected": "rejected"},
                  entropy={"policy/chosen": "chosen"},
                  params={"beta": 2.5, "m_l": 0.6, "m_r": 0.8}),
    "stapo_dpo": dict(fn=stapo_dpo, logp=PAIR_KEYS, entropy={"policy/chosen": "chosen"},
                      params={"beta": 0.1, "m_l": 0.6, "m_r": 0.8}),
    "inspo": dict(fn=inspo, logp={INS_CHOSEN: "chosen", "ref/chosen": "chosen",
                                  INS_REJECTED: "rejected", "ref/rejected": "rejected"},
                  params={"beta": 0.1}),
    "ins_simpo": dict(fn=ins_simpo, logp={INS_CHOSEN: "chosen", INS_REJECTED: "rejected"},
                      params={"beta": 2.5, "gamma": 1.4}),
    "sgdpo": dict(fn=sgdpo, logp=PAIR_KEYS, params={"beta": 0.1, "r1": 0.8, "r2": 0.8},
                  picks={PICK_CHOSEN: "chosen", PICK_REJECTED: "rejected"}),
    "copo": dict(fn=copo, logp=dict(PAIR_KEYS, **{"policy/a": "a", "ref/a": "a"}),
                 fields={"chosen_scores": "chosen"},
                 params={"beta": 0.1, "tau": 0.2, "lambda_rta": 0.01, "lambda_nll": 0.01,
                         "eps": 1e-8}),
    "rao": dict(fn=rao, logp={"policy/response": "response", "ref/response": "response",
                              "policy/" + RAO_PREFIX: "prompt[1:]",
                              "ref/" + RAO_PREFIX: "prompt[1:]"},
                fields={"reward": None}, params={"beta": 0.1, "z0": 50.0}),
}

# --set variations run besides the defaults: each knob moved, and the knobs that make a
# small term dominate (CoPO's λs) raised so an error in that term cannot hide.
VARIATIONS = {
    "sft": [],
    "dpo": [{"beta": 0.5}, {"beta": 0.03}],
    "lora_dpo": [{"beta": 0.5}],
    "simpo": [{"beta": 1.0, "gamma": 0.3}, {"gamma": -0.5}],
    "ipo": [{"tau": 0.5}, {"tau": 2.0}],
    "cpo": [{"beta": 0.5, "lambda": 0.2}, {"per_example_nll": 1},
            {"beta": 0.3, "lambda": 2.0, "per_example_nll": 1}],
    "orpo": [{"lambda": 1.0}, {"per_example_nll": 1}, {"lambda": 0.5, "per_example_nll": 1}],
    "rdpo": [{"alpha": 1.0}, {"beta": 0.5, "alpha": 0.0}],
    "stapo": [{"m_l": 0.2, "m_r": 0.4}, {"beta": 1.0, "m_l": -0.5, "m_r": 0.5}],
    "stapo_dpo": [{"beta": 0.5, "m_l": -1.0, "m_r": 1.0}],
    "inspo": [{"beta": 0.5}],
    "ins_simpo": [{"beta": 1.0, "gamma": 0.5}],
    "sgdpo": [{"r1": 0.6, "r2": 0.9}, {"r1": 0.3, "r2": 0.5, "beta": 0.5}],
    "copo": [{"tau": 0.5, "lambda_rta": 1.0, "lambda_nll": 1.0},
             {"beta": 2.0, "lambda_rta": 0.5, "lambda_nll": 0.3, "eps": 1e-3}],
    "rao": [{"beta": 0.5, "z0": 2.0}],
}
