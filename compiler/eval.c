/* eval.c — the float64 interpreter: every node of the graph, forward and backward, over
 * a batch whose model calls' outputs are given. It is the reference semantics that
 * `poc probe` exposes and that generated kernels are checked against.
 *
 * Conventions the code generator must follow too:
 *   - a per-token op over several vectors is as long as the shortest (masks ANDed);
 *   - reductions over zero tokens give 0 (sum, mean, max, dot, norm, cos, len);
 *   - cos is 0 when either norm is 0, and then passes no gradient;
 *   - pick(y, n) marks floor(n) positions, clamped to [0, len(y)];
 *   - batch_sort orders by value, NaN last, ties by example (ir_batch_order).  */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ir.h"
#include "pocrt.h"


void ir_pick_mask(uint64_t seed, int pick, int example, int len, double n, double *mask) {
  for (int t = 0; t < len; t++) mask[t] = 0;
  int k = n >= len ? len : n > 0 ? (int)floor(n) : 0;
  if (k <= 0) return;
  int *perm = ir_xcalloc((size_t)len, sizeof *perm);
  for (int t = 0; t < len; t++) perm[t] = t;
  poc_rng r = poc_rng_derive(seed, (uint64_t)pick, (uint64_t)example);
  /* partial Fisher–Yates: position j takes a uniform draw among the len - j left */
  for (int j = 0; j < k; j++) {
    int q = j + (int)(poc_rng_uniform(&r) * (double)(len - j));
    if (q >= len) q = len - 1;
    int tmp = perm[j];
    perm[j] = perm[q];
    perm[q] = tmp;
    mask[perm[j]] = 1;
  }
  free(perm);
}

int *ir_dom_lengths(const ir_graph *g, const ir_env *env, int d) {
  int *len = ir_xcalloc((size_t)env->B, sizeof *len);
  const ir_domain *dm = &g->doms[d];
  if (env->domlen && env->domlen[d]) {
    memcpy(len, env->domlen[d], (size_t)env->B * sizeof *len);
    return len;
  }
  if (dm->kind == IR_DOM_SLICE) {
    int *base = ir_dom_lengths(g, env, dm->base);
    for (int i = 0; i < env->B; i++) {
      if (base[i] < 0) {
        len[i] = -1;
        continue;
      }
      int hi = dm->hi < 0 || dm->hi > base[i] ? base[i] : dm->hi;
      len[i] = hi > dm->lo ? hi - dm->lo : 0;
    }
    free(base);
    return len;
  }
  for (int i = 0; i < env->B; i++) len[i] = -1;
  return len;
}

/* Reads input x at example i, token t, broadcasting lower levels. */
static double at(const ir_graph *g, const ir_val *vals, int x, int i, int t) {
  const ir_val *v = &vals[x];
  switch (g->nodes[x].level) {
  case IR_LCONST:
  case IR_LBATCH: return v->v[0];
  case IR_LEXAMPLE: return v->v[i];
  case IR_LTOKEN: return v->v[v->off[i] + t];
  }
  return NAN;
}

static void shape_token(ir_val *v, int B, const int *len) {
  v->len = ir_xcalloc((size_t)B, sizeof *v->len);
  v->off = ir_xcalloc((size_t)B + 1, sizeof *v->off);
  for (int i = 0; i < B; i++) {
    v->len[i] = len[i];
    v->off[i + 1] = v->off[i] + len[i];
  }
  v->total = v->off[B];
  v->v = ir_xcalloc((size_t)v->total, sizeof *v->v);
}

#define EFAIL(...)                          \
  do {                                      \
    snprintf(err, errlen, __VA_ARGS__);     \
    ir_vals_free(g, vals);                  \
    return NULL;                            \
  } while (0)

ir_val *ir_eval(const ir_graph *g, const ir_env *env, char *err, size_t errlen) {
  int B = env->B;
  ir_val *vals = ir_xcalloc((size_t)g->n, sizeof *vals);
  int *tmp = ir_xcalloc((size_t)B, sizeof *tmp);
  for (int id = 0; id < g->n; id++) {
    const ir_node *n = &g->nodes[id];
    ir_val *o = &vals[id];
    const ir_opinfo *oi = ir_op_info(n->op);
    int a = n->in[0], b = n->in[1];
    /* the shape first */
    if (n->level == IR_LTOKEN) {
      switch (n->op) {
      case IR_LOGP:
      case IR_ENTROPY:
      case IR_LOGSUMSQ:
      case IR_SAMPLE:
      case IR_PICK:
      case IR_POS:
      case IR_FIELD: {
        int *len = ir_dom_lengths(g, env, n->dom);
        for (int i = 0; i < B; i++)
          if (len[i] < 0) {
            free(len);
            free(tmp);
            EFAIL("the token count of '%s' is not known", g->doms[n->dom].name);
          }
        shape_token(o, B, len);
        free(len);
        break;
      }
      case IR_SLICE:
        for (int i = 0; i < B; i++) {
          int m = vals[a].len[i];
          int hi = n->hi < 0 || n->hi > m ? m : n->hi;
          tmp[i] = hi > n->idx ? hi - n->idx : 0;
        }
        shape_token(o, B, tmp);
        break;
      case IR_FIT:
      case IR_BCAST:
        shape_token(o, B, vals[b].len);
        break;
      case IR_ARGMAX:
        shape_token(o, B, vals[a].len);
        break;
      default: /* elementwise: the shortest token input */
        for (int i = 0; i < B; i++) {
          tmp[i] = -1;
          for (int k = 0; k < n->nin; k++)
            if (g->nodes[n->in[k]].level == IR_LTOKEN &&
                (tmp[i] < 0 || vals[n->in[k]].len[i] < tmp[i]))
              tmp[i] = vals[n->in[k]].len[i];
          if (tmp[i] < 0) tmp[i] = 0;
        }
        shape_token(o, B, tmp);
        break;
      }
    } else {
      o->total = n->level == IR_LEXAMPLE ? B : 1;
      o->v = ir_xcalloc((size_t)o->total, sizeof *o->v);
    }
    /* then the values */
    switch (oi->cls) {
    case IR_LEAF:
    case IR_CALL:
      switch (n->op) {
      case IR_CONST: o->v[0] = n->num; break;
      case IR_PARAM: o->v[0] = env->knobs[n->idx]; break;
      case IR_NBATCH: o->v[0] = B; break;
      case IR_SEQLEN: {
        int *len = ir_dom_lengths(g, env, n->dom);
        for (int i = 0; i < B; i++) o->v[i] = len[i];
        bool bad = false;
        for (int i = 0; i < B; i++) bad |= len[i] < 0;
        free(len);
        if (bad) {
          free(tmp);
          EFAIL("the token count of '%s' is not known", g->doms[n->dom].name);
        }
        break;
      }
      case IR_SAMPLE: break; /* token ids: not numbers any op reads */
      case IR_POS:
        for (int i = 0; i < B; i++)
          for (int t = 0; t < o->len[i]; t++) o->v[o->off[i] + t] = t;
        break;
      case IR_PICK:
        for (int i = 0; i < B; i++)
          ir_pick_mask(env->seed, n->idx, i, o->len[i], at(g, vals, a, i, 0), o->v + o->off[i]);
        break;
      case IR_FIELD:
      case IR_LOGP:
      case IR_ENTROPY:
      case IR_LOGSUMSQ:
      case IR_REWARD:
        if (!env->leaf || !env->leaf[id]) {
          free(tmp);
          EFAIL("no values given for %s '%s'", n->op == IR_FIELD ? "field" : oi->name,
                n->op == IR_FIELD ? g->fields[n->idx].name : n->key);
        }
        memcpy(o->v, env->leaf[id], (size_t)o->total * sizeof *o->v);
        break;
      default: break;
      }
      break;
    case IR_ELEM:
    case IR_CTL:
      for (int i = 0; i < (n->level >= IR_LEXAMPLE ? B : 1); i++) {
        int nt = n->level == IR_LTOKEN ? o->len[i] : 1;
        double *dst = n->level == IR_LTOKEN ? o->v + o->off[i] : o->v + i;
        for (int t = 0; t < nt; t++) {
          double x = at(g, vals, a, i, t);
          double y = n->nin > 1 ? at(g, vals, b, i, t) : 0;
          double z = n->nin > 2 ? at(g, vals, n->in[2], i, t) : 0;
          dst[t] = ir_scalar(n->op, x, y, z);
        }
      }
      break;
    case IR_TOKR:
      for (int i = 0; i < B; i++) {
        const ir_val *x = &vals[a], *y = n->nin > 1 ? &vals[b] : NULL;
        int m = x->len[i];
        if (y && y->len[i] < m) m = y->len[i];
        const double *p = x->v + x->off[i], *q = y ? y->v + y->off[i] : NULL;
        double s = 0, s2 = 0, s3 = 0;
        switch (n->op) {
        case IR_SUM: for (int t = 0; t < m; t++) s += p[t]; break;
        case IR_MEAN:
          for (int t = 0; t < m; t++) s += p[t];
          s = m ? s / m : 0;
          break;
        case IR_TMAX:
          s = m ? p[0] : 0;
          for (int t = 1; t < m; t++) if (p[t] > s) s = p[t];
          break;
        case IR_LEN: s = m; break;
        case IR_DOT: for (int t = 0; t < m; t++) s += p[t] * q[t]; break;
        case IR_NORM:
          for (int t = 0; t < m; t++) s += p[t] * p[t];
          s = sqrt(s);
          break;
        case IR_COS:
          for (int t = 0; t < m; t++) s += p[t] * q[t], s2 += p[t] * p[t], s3 += q[t] * q[t];
          s = s2 > 0 && s3 > 0 ? s / (sqrt(s2) * sqrt(s3)) : 0;
          break;
        default: break;
        }
        o->v[i] = s;
      }
      break;
    case IR_BATR: {
      const double *x = vals[a].v;
      double s = 0;
      for (int i = 0; i < B; i++) s += x[i];
      if (n->op == IR_BMEAN) s /= B;
      if (n->op == IR_BSTD) {
        double mu = s / B, v = 0;
        for (int i = 0; i < B; i++) v += (x[i] - mu) * (x[i] - mu);
        s = sqrt(v / B);
      }
      o->v[0] = s;
      break;
    }
    case IR_BPERM: {
      /* batch_sort: y_k = x_{p(k)}; its adjoint: y_{p(k)} = g_k; p the order of x */
      const double *x = vals[n->op == IR_BSORT ? a : b].v, *v = vals[a].v;
      int *perm = ir_xcalloc((size_t)B + 1, sizeof *perm);
      ir_batch_order(x, B, perm);
      for (int k = 0; k < B; k++) {
        if (n->op == IR_BSORT) o->v[k] = v[perm[k]];
        else o->v[perm[k]] = v[k];
      }
      free(perm);
      break;
    }
    case IR_SHAPE:
      if (n->level != IR_LTOKEN) { /* bcast to EXAMPLE or BATCH */
        for (int i = 0; i < o->total; i++) o->v[i] = at(g, vals, a, i, 0);
        break;
      }
      for (int i = 0; i < B; i++) {
        double *dst = o->v + o->off[i];
        switch (n->op) {
        case IR_SLICE:
          for (int t = 0; t < o->len[i]; t++) dst[t] = vals[a].v[vals[a].off[i] + n->idx + t];
          break;
        case IR_FIT:
          for (int t = 0; t < o->len[i]; t++) {
            int s = t - n->idx;
            dst[t] = s >= 0 && s < vals[a].len[i] ? vals[a].v[vals[a].off[i] + s] : 0;
          }
          break;
        case IR_BCAST:
          for (int t = 0; t < o->len[i]; t++) dst[t] = at(g, vals, a, i, t);
          break;
        case IR_ARGMAX: {
          int best = -1;
          for (int t = 0; t < o->len[i]; t++) {
            double x = vals[a].v[vals[a].off[i] + t];
            if (best < 0 || x > vals[a].v[vals[a].off[i] + best]) best = t;
          }
          if (best >= 0) dst[best] = 1;
          break;
        }
        default: break;
        }
      }
      break;
    }
  }
  free(tmp);
  return vals;
}

void ir_vals_free(const ir_graph *g, ir_val *vals) {
  if (!vals) return;
  for (int i = 0; i < g->n; i++) {
    free(vals[i].len);
    free(vals[i].off);
    free(vals[i].v);
  }
  free(vals);
}
