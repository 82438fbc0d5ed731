/* fuse.c — the shape of the objective kernel as two passes over the differentiated IR,
 * each followed by the verifier (ir_verify_fusion):
 *
 *   recompute  Cuts the graph into *stages* at batch reductions and batch sorts: stage s
 *              is one loop over the examples computing every per-example and per-token
 *              node whose inputs need s of them. Marks what crosses a cut: a per-token
 *              value a later stage reads is computed again there (IR_F_RECOMP; it is
 *              elementwise over model outputs, and storing it would cost a vector per
 *              example of the batch), a per-example value a later stage, a reduction or
 *              a sort reads goes to a per-example array (IR_F_STORE).
 *
 *   fuse       Inside one example, list-schedules each stage's nodes, in IR order, into
 *              *token loops*: a per-token node joins the earliest loop over its domain
 *              that follows everything it reads, a token reduction accumulates in the
 *              loop of its inputs, a per-example node sits between loops as soon as its
 *              inputs are known. Each loop, each run of per-example statements between
 *              loops, and each batch step between stages is a *group*; generated code
 *              emits a group as one piece and names it after the .po value it computes
 *              and its line. A loop reads each model output at its own token once; a
 *              second loop over the same domain exists only because something in it
 *              needs a reduction (or an offset read) of the first.
 *
 * With fusion off (poc build --unfused) fuse makes one group per node: the emitter then
 * writes one function per node over the whole batch, from the same pipeline. */
#include <stdlib.h>
#include <string.h>

#include "ir.h"

/* ---- what the emitters share ---------------------------------------------------- */

bool ir_tok_leaf(const ir_node *n) {
  return ir_head_call(n->op) || (n->op == IR_FIELD && n->level == IR_LTOKEN);
}

bool ir_tok_computed(const ir_node *n) {
  return n->level == IR_LTOKEN && !ir_tok_leaf(n) && n->op != IR_PICK && n->op != IR_ARGMAX &&
         n->op != IR_SAMPLE;
}

bool ir_value_input(const ir_graph *g, const ir_node *n, int k) {
  if (g->nodes[n->in[k]].op == IR_SAMPLE) return false;
  if ((n->op == IR_FIT || n->op == IR_BCAST) && k == 1) return false; /* a shape only */
  if (n->op == IR_LEN || n->op == IR_SEQLEN) return false;
  return true;
}

bool ir_offset_read(const ir_graph *g, const ir_node *n, int k) {
  const ir_node *x = &g->nodes[n->in[k]];
  if (n->op == IR_SLICE) return true;
  if (n->op == IR_FIT) return k == 0 && (n->idx != 0 || x->dom != n->dom);
  return false;
}

static bool is_perm(const ir_graph *g, int i) { return ir_op_info(g->nodes[i].op)->cls == IR_BPERM; }

/* A token reduction that sums in a loop (len is a count, known before any loop). */
static bool accumulates(const ir_node *n) { return ir_op_info(n->op)->cls == IR_TOKR && n->op != IR_LEN; }

static bool zero_adjoint(const ir_graph *g, int d) {
  const ir_node *n = &g->nodes[d];
  return n->op == IR_BCAST && g->nodes[n->in[0]].op == IR_CONST && g->nodes[n->in[0]].num == 0;
}

/* Whether gradient k is written: a call whose adjoints are all the constant 0 needs none
 * from the runtime (codegen.c drops it), any other call gets all of its adjoints. */
static bool grad_written(const ir_graph *g, int k) {
  const char *key = g->nodes[g->grads[k].call].key;
  for (int j = 0; j < g->ngrads; j++) {
    const char *kj = g->nodes[g->grads[j].call].key;
    if ((kj == key || (kj && key && !strcmp(kj, key))) && !zero_adjoint(g, g->grads[j].grad))
      return true;
  }
  return false;
}

/* The nodes stage s computes: its per-example nodes and the gradients it writes, and
 * the per-token values they read (some of them perhaps an earlier stage's too). */
static void stage_needs(const ir_graph *g, int s, char *need) {
  memset(need, 0, (size_t)g->n + 1);
  for (int i = 0; i < g->n; i++)
    if (g->nodes[i].level == IR_LEXAMPLE && g->nodes[i].stage == s && !is_perm(g, i)) need[i] = 1;
  for (int k = 0; k < g->ngrads; k++)
    if (g->nodes[g->grads[k].grad].stage == s && grad_written(g, k)) need[g->grads[k].grad] = 1;
  for (int i = g->n - 1; i >= 0; i--) {
    if (!need[i]) continue;
    const ir_node *n = &g->nodes[i];
    for (int k = 0; k < n->nin; k++)
      if (ir_value_input(g, n, k) && g->nodes[n->in[k]].level == IR_LTOKEN) need[n->in[k]] = 1;
  }
}

/* ---- recompute ------------------------------------------------------------------- */

int ir_recompute(ir_graph *g, char *err, size_t errlen) {
  (void)err;
  (void)errlen;
  ir_fusion *F = &g->fusion;
  F->ngroups = 0;
  F->groups = NULL;
  F->nstages = 1;
  for (int i = 0; i < g->n; i++) {
    ir_node *n = &g->nodes[i];
    n->flags &= ~(unsigned)(IR_F_RECOMP | IR_F_STORE);
    n->grp = -1;
    int o = 0;
    for (int k = 0; k < n->nin; k++)
      if (g->nodes[n->in[k]].op != IR_SAMPLE && g->nodes[n->in[k]].stage > o) o = g->nodes[n->in[k]].stage;
    ir_class cls = ir_op_info(n->op)->cls;
    if (cls == IR_BATR || cls == IR_BPERM) o++;
    n->stage = o;
    if (o + 1 > F->nstages && n->level >= IR_LEXAMPLE) F->nstages = o + 1;
  }
  char *need = ir_xcalloc((size_t)g->n + 1, 1);
  int *first = ir_xcalloc((size_t)g->n + 1, sizeof *first);
  for (int i = 0; i < g->n; i++) first[i] = -1;
  for (int s = 0; s < F->nstages; s++) {
    stage_needs(g, s, need);
    for (int i = 0; i < g->n; i++) {
      if (!need[i]) continue;
      ir_node *n = &g->nodes[i];
      if (n->level == IR_LTOKEN && !ir_tok_leaf(n)) { /* model outputs are inputs: read, not made */
        if (first[i] < 0) first[i] = s;
        else n->flags |= IR_F_RECOMP; /* today's rule: per-token values are recomputed */
      }
      for (int k = 0; k < n->nin; k++) {
        int x = n->in[k];
        if (ir_value_input(g, n, k) && g->nodes[x].level == IR_LEXAMPLE &&
            (g->nodes[x].stage < s || is_perm(g, x)))
          g->nodes[x].flags |= IR_F_STORE;
      }
    }
  }
  /* reductions and sorts read whole per-example arrays; a sort's result is one */
  for (int i = 0; i < g->n; i++) {
    ir_class cls = ir_op_info(g->nodes[i].op)->cls;
    if (cls == IR_BATR || cls == IR_BPERM)
      for (int k = 0; k < g->nodes[i].nin; k++) g->nodes[g->nodes[i].in[k]].flags |= IR_F_STORE;
    if (cls == IR_BPERM) g->nodes[i].flags |= IR_F_STORE;
  }
  free(need);
  free(first);
  return 0;
}

/* ---- fuse: scheduling one stage -------------------------------------------------- */

typedef struct fsched {
  const ir_graph *g;
  int stage;
  char *need;
  int *blk, *pos, *bdom;
  int nblk;
} fsched;

static int avail_tok(const fsched *S, int i, bool offset) {
  const ir_node *x = &S->g->nodes[i];
  if (ir_tok_leaf(x)) return 0;
  if (x->op == IR_PICK) return S->pos[i];
  if (x->op == IR_ARGMAX) return S->blk[i] + 1;
  return S->blk[i] + (offset ? 1 : 0);
}

static int avail_ex(const fsched *S, int i) {
  const ir_node *x = &S->g->nodes[i];
  if (x->level == IR_LEXAMPLE && x->stage == S->stage && !is_perm(S->g, i)) return S->pos[i];
  return 0; /* an earlier stage's, stored */
}

static int find_block(fsched *S, int dom, int from) {
  for (int b = from; b < S->nblk; b++)
    if (S->bdom[b] == dom) return b;
  S->bdom[S->nblk] = dom;
  return S->nblk++;
}

/* blk: the token loop of a per-token node or a reduction's accumulation; pos: the
 * loop a per-example statement follows (0: before the first). */
static void schedule(fsched *S) {
  const ir_graph *g = S->g;
  S->nblk = 0;
  for (int i = 0; i < g->n; i++) S->blk[i] = S->pos[i] = -1;
  for (int i = 0; i < g->n; i++) {
    if (!S->need[i]) continue;
    const ir_node *n = &g->nodes[i];
    ir_class cls = ir_op_info(n->op)->cls;
    int r = 0;
    if (n->level == IR_LEXAMPLE && cls != IR_TOKR) {
      for (int k = 0; k < n->nin; k++)
        if (ir_value_input(g, n, k) && avail_ex(S, n->in[k]) > r) r = avail_ex(S, n->in[k]);
      S->pos[i] = r;
    } else if (cls == IR_TOKR) {
      if (n->op == IR_LEN) {
        S->pos[i] = 0;
        continue;
      }
      for (int k = 0; k < n->nin; k++)
        if (avail_tok(S, n->in[k], false) > r) r = avail_tok(S, n->in[k], false);
      S->blk[i] = find_block(S, g->nodes[n->in[0]].dom, r);
      S->pos[i] = S->blk[i] + 1;
    } else if (n->op == IR_PICK) {
      S->pos[i] = avail_ex(S, n->in[0]);
    } else if (n->op == IR_ARGMAX) {
      S->blk[i] = find_block(S, n->dom, avail_tok(S, n->in[0], false));
    } else if (ir_tok_computed(n)) {
      for (int k = 0; k < n->nin; k++) {
        if (!ir_value_input(g, n, k)) continue;
        const ir_node *x = &g->nodes[n->in[k]];
        int a = x->level == IR_LTOKEN ? avail_tok(S, n->in[k], ir_offset_read(g, n, k))
                                      : avail_ex(S, n->in[k]);
        if (a > r) r = a;
      }
      S->blk[i] = find_block(S, n->dom, r);
    }
  }
}

/* ---- fuse: groups ---------------------------------------------------------------- */

typedef struct fgroups {
  ir_graph *g;
  ir_group *v;
  int n, cap;
  char *sel;   /* the members of the group being added */
  char *seen;  /* in some group already */
} fgroups;

static void add_group(fgroups *G, ir_group_kind kind, int stage, int at, int dom) {
  ir_graph *g = G->g;
  int cnt = 0;
  for (int i = 0; i < g->n; i++) cnt += G->sel[i] != 0;
  if (!cnt) return;
  if (G->n == G->cap) {
    G->cap = G->cap ? 2 * G->cap : 16;
    G->v = realloc(G->v, (size_t)G->cap * sizeof *G->v);
    if (!G->v) {
      fprintf(stderr, "poc: out of memory\n");
      exit(1);
    }
  }
  ir_group *gr = &G->v[G->n++];
  memset(gr, 0, sizeof *gr);
  gr->kind = kind;
  gr->stage = stage;
  gr->at = at;
  gr->dom = dom;
  gr->mem = ir_alloc(g, (size_t)cnt * sizeof *gr->mem);
  for (int i = 0; i < g->n; i++)
    if (G->sel[i]) {
      gr->mem[gr->nmem++] = i;
      G->seen[i] = 1;
      G->sel[i] = 0;
    }
}

/* The group's name: the last member the .po names (else the last member's op), made an
 * identifier, with the group's number and that member's line. */
static void name_group(ir_graph *g, int gi) {
  ir_group *gr = &g->fusion.groups[gi];
  int rep = -1;
  gr->line_lo = gr->line_hi = 0;
  for (int k = 0; k < gr->nmem; k++) {
    const ir_node *n = &g->nodes[gr->mem[k]];
    if (n->grp != gi) continue; /* a recomputed copy: its home names it */
    int line = n->loc.src ? n->loc.line : 0;
    if (line > 0 && (!gr->line_lo || line < gr->line_lo)) gr->line_lo = line;
    if (line > gr->line_hi) gr->line_hi = line;
    if (n->name || rep < 0 || !g->nodes[rep].name) rep = gr->mem[k];
  }
  if (rep < 0) rep = gr->mem[gr->nmem - 1];
  const ir_node *r = &g->nodes[rep];
  char word[48];
  const char *src = r->name ? r->name : gr->kind == IR_G_INPUT ? "inputs" : ir_op_info(r->op)->name;
  size_t o = 0;
  for (const char *s = src; *s && o + 1 < sizeof word; s++) {
    char c = *s;
    if (c == '(' || c == ')') continue; /* a def's result: "S()" */
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
    word[o++] = ok ? c : '_';
  }
  word[o] = 0;
  int line = r->loc.src && r->loc.line > 0 ? r->loc.line : gr->line_hi;
  if (line > 0) gr->name = ir_fmt(g, "grp%d_%s_L%d", gi, word, line);
  else gr->name = ir_fmt(g, "grp%d_%s", gi, word);
}

int ir_fuse(ir_graph *g, char *err, size_t errlen) {
  ir_fusion *F = &g->fusion;
  size_t n1 = (size_t)g->n + 1;
  fgroups G = {.g = g, .sel = ir_xcalloc(n1, 1), .seen = ir_xcalloc(n1, 1)};
  if (g->unfused) {
    for (int i = 0; i < g->n; i++) {
      G.sel[i] = 1;
      add_group(&G, IR_G_NODE, g->nodes[i].stage, i, g->nodes[i].dom);
    }
  } else {
    for (int i = 0; i < g->n; i++) {
      const ir_node *n = &g->nodes[i];
      G.sel[i] = n->op == IR_CONST || ir_tok_leaf(n) || n->op == IR_SAMPLE;
    }
    add_group(&G, IR_G_INPUT, -1, 0, -1);
    for (int i = 0; i < g->n; i++) {
      const ir_node *n = &g->nodes[i];
      G.sel[i] = !G.seen[i] && (n->level == IR_LCONST ||
                                ((n->level == IR_LBATCH || is_perm(g, i)) && n->stage == 0));
    }
    add_group(&G, IR_G_PROLOGUE, -1, 0, -1);
    fsched S = {.g = g, .need = ir_xcalloc(n1, 1), .blk = ir_xcalloc(n1, sizeof(int)),
                .pos = ir_xcalloc(n1, sizeof(int)), .bdom = ir_xcalloc(4 * n1, sizeof(int))};
    int last = 0;
    for (int i = 0; i < g->n; i++)
      if ((g->nodes[i].level == IR_LBATCH || is_perm(g, i)) && g->nodes[i].stage > last)
        last = g->nodes[i].stage;
    for (int s = 0; s < F->nstages; s++) {
      S.stage = s;
      stage_needs(g, s, S.need);
      for (int i = 0; i < g->n; i++)
        if (S.need[i] && G.seen[i] && !ir_tok_leaf(&g->nodes[i]) &&
            !(g->nodes[i].flags & IR_F_RECOMP)) {
          snprintf(err, errlen, "stage %d reads per-token %%%d of an earlier stage, which is "
                   "neither recomputed nor stored", s, i);
          free(S.need), free(S.blk), free(S.pos), free(S.bdom), free(G.sel), free(G.seen), free(G.v);
          return -1;
        }
      schedule(&S);
      for (int b = 0; b <= S.nblk; b++) {
        for (int i = 0; i < g->n; i++) {
          const ir_node *n = &g->nodes[i];
          G.sel[i] = S.need[i] && S.pos[i] == b && S.blk[i] < 0 &&
                     (n->level == IR_LEXAMPLE || n->op == IR_PICK);
        }
        add_group(&G, IR_G_EXAMPLE, s, b, -1);
        if (b == S.nblk) break;
        for (int i = 0; i < g->n; i++) G.sel[i] = S.need[i] && S.blk[i] == b;
        add_group(&G, IR_G_TOKENS, s, b, S.bdom[b]);
      }
      /* the batch values these examples make possible; after the last stage, the rest */
      int hi = s + 1 == F->nstages && last > s + 1 ? last : s + 1;
      for (int o = s + 1; o <= hi; o++) {
        for (int i = 0; i < g->n; i++)
          G.sel[i] = !G.seen[i] && (g->nodes[i].level == IR_LBATCH || is_perm(g, i)) &&
                     g->nodes[i].stage == o;
        add_group(&G, IR_G_BATCH, o, 0, -1);
      }
    }
    for (int i = 0; i < g->n; i++) G.sel[i] = !G.seen[i];
    add_group(&G, IR_G_SHAPE, -1, 0, -1);
    free(S.need);
    free(S.blk);
    free(S.pos);
    free(S.bdom);
  }
  F->ngroups = G.n;
  F->groups = ir_alloc(g, (size_t)(G.n ? G.n : 1) * sizeof *F->groups);
  memcpy(F->groups, G.v, (size_t)G.n * sizeof *G.v);
  for (int i = 0; i < g->n; i++) g->nodes[i].grp = -1;
  for (int gi = 0; gi < F->ngroups; gi++)
    for (int k = 0; k < F->groups[gi].nmem; k++)
      if (g->nodes[F->groups[gi].mem[k]].grp < 0) g->nodes[F->groups[gi].mem[k]].grp = gi;
  for (int gi = 0; gi < F->ngroups; gi++) name_group(g, gi);
  free(G.v);
  free(G.sel);
  free(G.seen);
  return 0;
}

/* ---- the fusion's verifier ------------------------------------------------------- */

#define FAIL(...)                          \
  do {                                     \
    snprintf(err, errlen, __VA_ARGS__);    \
    rc = -1;                               \
    goto done;                             \
  } while (0)

int ir_verify_fusion(const ir_graph *g, char *err, size_t errlen) {
  const ir_fusion *F = &g->fusion;
  if (!F->ngroups) return 0;
  int rc = 0, n = g->n, ns = F->nstages > 0 ? F->nstages : 1;
  int *cnt = ir_xcalloc((size_t)n + 1, sizeof *cnt);
  int *home = ir_xcalloc((size_t)n + 1, sizeof *home);
  /* cp[s * n + i]: the group computing node i in stage s (home or recomputed copy) */
  int *cp = ir_xcalloc((size_t)ns * (size_t)n + 1, sizeof *cp);
  for (int i = 0; i < n; i++) home[i] = -1;
  for (size_t i = 0; i < (size_t)ns * (size_t)n; i++) cp[i] = -1;
  for (int gi = 0; gi < F->ngroups; gi++) {
    const ir_group *gr = &F->groups[gi];
    bool in_stage = gr->kind == IR_G_EXAMPLE || gr->kind == IR_G_TOKENS;
    if (in_stage && (gr->stage < 0 || gr->stage >= ns))
      FAIL("group %s: stage %d out of range", gr->name, gr->stage);
    for (int k = 0; k < gr->nmem; k++) {
      int x = gr->mem[k];
      if (x < 0 || x >= n) FAIL("group %s: member %d out of range", gr->name, x);
      if (k && x <= gr->mem[k - 1]) FAIL("group %s: members out of order (%%%d after %%%d)", gr->name, x, gr->mem[k - 1]);
      if (cnt[x]++ == 0) {
        home[x] = gi;
      } else {
        const ir_group *h = &F->groups[home[x]];
        if (!(g->nodes[x].flags & IR_F_RECOMP) || g->nodes[x].level != IR_LTOKEN)
          FAIL("%%%d is in two groups, %s and %s, but is not a recomputed per-token value", x,
               h->name, gr->name);
        if (!in_stage || cp[gr->stage * n + x] >= 0)
          FAIL("%%%d is recomputed twice in stage %d (groups %s and %s)", x, gr->stage,
               F->groups[cp[gr->stage * n + x]].name, gr->name);
      }
      if (in_stage) cp[gr->stage * n + x] = gi;
      const ir_node *nd = &g->nodes[x];
      if (home[x] == gi && (in_stage || gr->kind == IR_G_BATCH) &&
          (nd->level == IR_LEXAMPLE || nd->level == IR_LBATCH) && nd->stage != gr->stage)
        FAIL("%%%d of stage %d sits in group %s of stage %d", x, nd->stage, gr->name, gr->stage);
    }
  }
  for (int i = 0; i < n; i++) {
    if (!cnt[i]) FAIL("%%%d is in no group", i);
    if (g->nodes[i].grp != home[i])
      FAIL("%%%d's home group is %d but it is first computed in %s", i, g->nodes[i].grp,
           F->groups[home[i]].name);
  }
  /* every value read is computed before, or earlier in the same loop at the same token */
  for (int gi = 0; gi < F->ngroups; gi++) {
    const ir_group *gr = &F->groups[gi];
    bool in_stage = gr->kind == IR_G_EXAMPLE || gr->kind == IR_G_TOKENS;
    for (int k = 0; k < gr->nmem; k++) {
      int x = gr->mem[k];
      const ir_node *nd = &g->nodes[x];
      for (int j = 0; j < nd->nin; j++) {
        if (!ir_value_input(g, nd, j)) continue;
        int y = nd->in[j];
        const ir_node *yn = &g->nodes[y];
        int hy = home[y];
        if (F->groups[hy].kind == IR_G_INPUT) continue;
        bool ok;
        if (gr->kind == IR_G_NODE || gr->kind == IR_G_SHAPE || gr->kind == IR_G_PROLOGUE ||
            gr->kind == IR_G_INPUT || yn->level <= IR_LBATCH || is_perm(g, y)) {
          ok = hy < gi || (hy == gi && gr->kind != IR_G_NODE); /* members in IR order */
          if (ok && gr->kind == IR_G_BATCH && yn->level == IR_LEXAMPLE && !(yn->flags & IR_F_STORE))
            FAIL("group %s reduces per-example %%%d, which is not marked stored", gr->name, y);
          if (ok && in_stage && is_perm(g, y) && !(yn->flags & IR_F_STORE))
            FAIL("group %s reads sorted %%%d, which is not marked stored", gr->name, y);
        } else if (yn->level == IR_LEXAMPLE) {
          if (!in_stage) {
            ok = hy < gi;
            if (ok && !(yn->flags & IR_F_STORE))
              FAIL("group %s reads per-example %%%d from an array, but it is not marked stored", gr->name, y);
          } else if (yn->stage < gr->stage) {
            ok = true;
            if (!(yn->flags & IR_F_STORE))
              FAIL("group %s (stage %d) reads %%%d of stage %d, which is not marked stored",
                   gr->name, gr->stage, y, yn->stage);
          } else {
            int h = cp[gr->stage * n + y];
            ok = h >= 0 && (h < gi || (h == gi && gr->kind == IR_G_EXAMPLE && !accumulates(yn)));
          }
        } else { /* per-token, computed in a loop (or a pick's or argmax's mask) */
          int h = in_stage ? cp[gr->stage * n + y] : hy;
          bool strict = yn->op == IR_PICK || yn->op == IR_ARGMAX || ir_offset_read(g, nd, j) ||
                        gr->kind == IR_G_EXAMPLE || !in_stage;
          ok = h >= 0 && (h < gi || (!strict && h == gi));
        }
        if (!ok)
          FAIL("group %s reads %%%d (for %%%d) before %s computes it", gr->name, y, x,
               hy >= 0 ? F->groups[hy].name : "any group");
      }
    }
  }
  /* the head's per-token outputs: a second loop over a domain rereads them only when it
     needs something the first could not give (a reduction of it, an offset read) */
  for (int g2 = 0; g2 < F->ngroups; g2++) {
    const ir_group *b2 = &F->groups[g2];
    if (b2->kind != IR_G_TOKENS) continue;
    for (int k = 0; k < b2->nmem; k++) {
      const ir_node *nd = &g->nodes[b2->mem[k]];
      for (int j = 0; j < nd->nin; j++) {
        int h = nd->in[j];
        if (!ir_value_input(g, nd, j) || !ir_head_call(g->nodes[h].op)) continue;
        for (int g1 = 0; g1 < g2; g1++) {
          const ir_group *b1 = &F->groups[g1];
          if (b1->kind != IR_G_TOKENS || b1->stage != b2->stage || b1->dom != b2->dom) continue;
          bool reads = false;
          for (int m = 0; m < b1->nmem && !reads; m++) {
            const ir_node *q = &g->nodes[b1->mem[m]];
            for (int t = 0; t < q->nin; t++) reads |= q->in[t] == h && ir_value_input(g, q, t);
          }
          if (!reads) continue;
          bool why = false;
          for (int t = 0; t < nd->nin && !why; t++) {
            int y = nd->in[t];
            const ir_node *yn = &g->nodes[y];
            if (!ir_value_input(g, nd, t) || yn->level <= IR_LBATCH || is_perm(g, y) ||
                (yn->level == IR_LEXAMPLE && yn->stage < b2->stage) ||
                F->groups[home[y]].kind == IR_G_INPUT)
              continue;
            int hy = cp[b2->stage * n + y];
            why = hy > g1 || (hy == g1 && (accumulates(yn) ||
                                           yn->op == IR_ARGMAX || ir_offset_read(g, nd, t)));
          }
          if (!why)
            FAIL("group %s reads model output %%%d again after group %s, though %%%d needs "
                 "nothing computed after it: the head's outputs must be read once",
                 b2->name, h, b1->name, b2->mem[k]);
        }
      }
    }
  }
done:
  free(cnt);
  free(home);
  free(cp);
  return rc;
}

/* ---- printing -------------------------------------------------------------------- */

const char *ir_group_kind_name(ir_group_kind k) {
  static const char *const names[] = {"input", "prologue", "example", "tokens", "batch",
                                      "shape", "node"};
  return names[k];
}

void ir_print_fusion(const ir_graph *g, FILE *f) {
  const ir_fusion *F = &g->fusion;
  fprintf(f, "groups: %d in %d stage%s%s\n", F->ngroups, F->nstages, F->nstages == 1 ? "" : "s",
          g->unfused ? " (fusion off: one per node)" : "");
  for (int gi = 0; gi < F->ngroups; gi++) {
    const ir_group *gr = &F->groups[gi];
    char where[96] = "";
    switch (gr->kind) {
    case IR_G_EXAMPLE: snprintf(where, sizeof where, "stage %d, before loop %d", gr->stage, gr->at); break;
    case IR_G_TOKENS:
      snprintf(where, sizeof where, "stage %d, loop %d over '%s'", gr->stage, gr->at, g->doms[gr->dom].name);
      break;
    case IR_G_BATCH: snprintf(where, sizeof where, "before stage %d", gr->stage); break;
    default: break;
    }
    fprintf(f, "  %-28s %-8s %-34s", gr->name, ir_group_kind_name(gr->kind), where);
    if (gr->line_lo > 0) {
      if (gr->line_lo == gr->line_hi) fprintf(f, " line %d  ", gr->line_lo);
      else fprintf(f, " lines %d-%d  ", gr->line_lo, gr->line_hi);
    }
    for (int k = 0; k < gr->nmem; k++) {
      int x = gr->mem[k];
      fprintf(f, " %%%d%s", x, g->nodes[x].grp != gi ? "(recomputed)" : "");
      if (g->nodes[x].name && g->nodes[x].grp == gi) fprintf(f, "=%s", g->nodes[x].name);
    }
    fputc('\n', f);
  }
  fprintf(f, "recomputed in a later stage:");
  int c = 0;
  for (int i = 0; i < g->n; i++)
    if (g->nodes[i].flags & IR_F_RECOMP) fprintf(f, " %%%d", i), c++;
  fprintf(f, "%s\nstored per example:", c ? "" : " (none)");
  c = 0;
  for (int i = 0; i < g->n; i++)
    if (g->nodes[i].flags & IR_F_STORE) fprintf(f, " %%%d", i), c++;
  fprintf(f, "%s\n", c ? "" : " (none)");
}
