/* cmd_build.c — `poc build FILE.po -o BIN [--unfused] [--no-hoist] [--arch sm_90,...]
 * [--emit-c DIR]` and `poc run FILE.po [BIN flags]`.
 *
 *   parse → check → lower → ir_pipeline (fold, cse, dce, hoist, separability, autodiff,
 *   ... batch, recompute, fuse — fuse off with --unfused) → memplan (prints "peak device
 *   memory: X GiB for micro_batch b, max_len T") → emit plan.c + kernels.c into a work directory → cc -O2 with the runtime's
 *   headers, linked with libpocrt.a and what it needs (OpenBLAS, cJSON, OpenMP, libm, and
 *   the CUDA libraries when libpocrt was built with them).
 *
 * The headers, libraries and flags come from the link description of poc's installation
 * or build tree (home.h), which CMake wrote from libpocrt's link interface.
 * The compiler is $CC (words split at spaces), else cc; it runs without a shell.
 *
 * `poc run` builds into a cache ($POC_CACHE_DIR, else $XDG_CACHE_HOME/poc, else
 * ~/.cache/poc) under a name that hashes the source text, poc's version and executable,
 * the build flags,
 * the installation (its place, its link description, its runtime libraries' sizes and
 * modification times) and the objective template, writing to a temporary name and
 * renaming, then checks the entry's size and hash and execs the binary with the remaining
 * arguments (the cache's rules are at poc_cmd_run). POC_KEEP_C=1 keeps the
 * generated sources and says where. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "codegen.h"
#include "driver.h"
#include "home.h"
#include "ir.h"

typedef struct build_opts {
  const char *file, *out, *emit_dir, *arch;
  const po_source *src;   /* poc run: the source already read and hashed (else read here) */
  bool unfused, no_hoist;
} build_opts;

/* ---- argument vectors ------------------------------------------------------------- */

typedef struct argv_t {
  char **v;
  int n, cap;
} argv_t;

static void arg_push(argv_t *a, const char *s) {
  if (a->n + 2 > a->cap) {
    a->cap = a->cap ? a->cap * 2 : 32;
    a->v = realloc(a->v, (size_t)a->cap * sizeof *a->v);
    if (!a->v) exit(1);
  }
  a->v[a->n] = strdup(s);
  if (!a->v[a->n]) exit(1);
  a->v[++a->n] = NULL;
}

static void arg_free(argv_t *a) {
  for (int i = 0; i < a->n; i++) free(a->v[i]);
  free(a->v);
}

/* ---- the link line ---------------------------------------------------------------- */

static bool exists(const char *path) {
  struct stat st;
  return stat(path, &st) == 0;
}

static void cc_command(argv_t *a) {
  const char *cc = getenv("CC");
  if (!cc || !*cc) cc = "cc";
  char *copy = strdup(cc);
  if (!copy) exit(1);
  for (char *tok = strtok(copy, " \t"); tok; tok = strtok(NULL, " \t")) arg_push(a, tok);
  free(copy);
}

/* cc -std=c11 -O2 CFLAGS -I... plan.c kernels.c -o out RUNTIME... LINK..., from the
 * installation's link description (home.h) */
static void link_line(argv_t *a, const poc_home *h, const char *dir, const char *out) {
  char path[4200];
  cc_command(a);
  arg_push(a, "-std=c11");
  arg_push(a, "-O2");
  for (int i = 0; i < h->ncflags; i++) arg_push(a, h->cflags[i]);
  arg_push(a, "-I");
  arg_push(a, h->include);
  snprintf(path, sizeof path, "%s/plan.c", dir);
  arg_push(a, path);
  snprintf(path, sizeof path, "%s/kernels.c", dir);
  arg_push(a, path);
  arg_push(a, "-o");
  arg_push(a, out);
  /* poc's runtime libraries call each other (pocrt and pocrt_cuda) */
  arg_push(a, "-Wl,--start-group");
  for (int i = 0; i < h->nruntime; i++) arg_push(a, h->runtime[i]);
  arg_push(a, "-Wl,--end-group");
  for (int i = 0; i < h->nlink; i++) arg_push(a, h->link[i]);
}

/* Appends s to buf (cap bytes, *n used), ending in "..." when it does not fit. */
static void add_word(char *buf, size_t cap, size_t *n, const char *sep, const char *s) {
  if (*n + 1 >= cap) return;
  int w = snprintf(buf + *n, cap - *n, "%s%s", sep, s);
  if (w < 0) return;
  if ((size_t)w >= cap - *n) {
    *n = cap - 1;
    if (cap > 4) strcpy(buf + cap - 4, "...");
  } else {
    *n += (size_t)w;
  }
}

/* The same command for the header of kernels.c: file names without this machine's
 * directories, and no rpaths. */
static void shown_line(char *buf, size_t cap, const argv_t *cmd, const poc_home *h) {
  size_t n = 0;
  buf[0] = 0;
  add_word(buf, cap, &n, "", cmd->v[0]);
  add_word(buf, cap, &n, " ", "-std=c11 -O2");
  for (int i = 0; i < h->ncflags; i++) add_word(buf, cap, &n, " ", h->cflags[i]);
  add_word(buf, cap, &n, " ", "-I include/poc plan.c kernels.c");
  for (int i = 0; i < h->nruntime + h->nlink; i++) {
    const char *s = i < h->nruntime ? h->runtime[i] : h->link[i - h->nruntime];
    if (!strncmp(s, "-Wl,-rpath", 10) || !strncmp(s, "-L", 2)) continue;
    const char *b = s[0] == '-' ? NULL : strrchr(s, '/');
    add_word(buf, cap, &n, " ", b ? b + 1 : s);
  }
}

/* With --arch the kernels' images are one more source; it defines data only, so where
 * it stands on the line does not matter. */
static void add_kernel_images(argv_t *a, const build_opts *o, const char *dir) {
  if (!o->arch) return;
  char path[4200];
  snprintf(path, sizeof path, "%s/cuda_images.c", dir);
  arg_push(a, path);
}

/* Runs argv with stdout and stderr into log; returns the exit status (-1: not run). */
static int run_logged(char *const *argv, const char *log) {
  pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) {
      dup2(fd, 1);
      dup2(fd, 2);
      close(fd);
    }
    execvp(argv[0], argv);
    fprintf(stderr, "cannot run '%s': %s\n", argv[0], strerror(errno));
    _exit(127);
  }
  int st;
  while (waitpid(pid, &st, 0) < 0)
    if (errno != EINTR) return -1;
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
}

static void print_file(const char *path, FILE *to) {
  FILE *f = fopen(path, "r");
  if (!f) return;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, f)) > 0) fwrite(buf, 1, n, to);
  fclose(f);
}

static void remove_dir(const char *dir) {
  static const char *const names[] = {"plan.c", "kernels.c", "cuda_images.c", "cc.log"};
  char path[4200];
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
    snprintf(path, sizeof path, "%s/%s", dir, names[i]);
    unlink(path);
  }
  rmdir(dir);
}

/* ---- GPU kernels built in (--arch) ------------------------------------------------- */

#ifdef POC_HAVE_CUDA
#include "pocrt_cuda.h"

static void emit_bytes(FILE *f, const unsigned char *b, size_t n) {
  for (size_t i = 0; i < n; i++) fprintf(f, "%u,%s", b[i], i % 40 == 39 ? "\n" : "");
}

/* One image for dimensions cd: every --arch architecture's cubin plus PTX of the lowest,
 * as arrays named img<k>_*, with the hash of the source they came from and their count.
 * Returns 0, or 1 after printing NVRTC's log. */
static int write_kernel_image(FILE *f, const build_opts *o, const poc_dims *cd, int k,
                              uint64_t *hash, int *n_blobs) {
  const char *archs[16];
  char list[256];
  int n_arch = 0;
  snprintf(list, sizeof list, "%s", o->arch);
  for (char *t = strtok(list, ","); t && n_arch < 16; t = strtok(NULL, ",")) archs[n_arch++] = t;
  char err[POC_ERR_LEN], *log = NULL;
  char *src = poc_cuda_instantiate(cd, NULL, 0, err);
  if (!src) {
    fprintf(stderr, "poc build: --arch: %s\n", err);
    return 1;
  }
  poc_cuda_image img;
  int rc = poc_cuda_compile(src, "poc_model.cu", archs, n_arch, &img, &log);
  *hash = poc_cuda_source_hash(src);
  free(src);
  if (rc) {
    fprintf(stderr, "poc build: --arch: compiling the GPU kernels failed:\n%s\n", log ? log : "");
    free(log);
    return 1;
  }
  free(log);
  for (int b = 0; b < img.n; b++) {
    fprintf(f, "static const unsigned char img%d_%d[] = {\n", k, b);
    emit_bytes(f, img.blob[b].data, img.blob[b].size);
    fputs("};\n", f);
  }
  fprintf(f, "static const poc_kernel_blob img%d_blobs[] = {\n", k);
  for (int b = 0; b < img.n; b++)
    fprintf(f, "    {\"%s\", %d, img%d_%d, %zu},\n", img.blob[b].arch, img.blob[b].is_ptx, k, b,
            img.blob[b].size);
  fprintf(f, "};\n\n");
  *n_blobs = img.n;
  poc_cuda_image_free(&img);
  return 0;
}

/* DIR/cuda_images.c: the kernels compiled for each distinct model config the program
 * reads (the kernels take the dimensions as constants), which plan.c points the program
 * at. The model folders are read as the training binary will, from the current directory.
 * Returns 0 with *n_images set, 2 for a model folder it cannot read, 1 otherwise. */
static int write_kernel_images(const build_opts *o, const ir_graph *g, const char *dir,
                               int *n_images) {
  poc_dims dims[64];
  int n = 0;
  for (int m = 0; m < g->nmodels; m++) {
    if (g->models[m].of >= 0 || !g->models[m].path) continue; /* frozen: its source's config */
    poc_config cfg;
    char err[POC_ERR_LEN];
    if (poc_config_load(g->models[m].path, &cfg, err)) {
      fprintf(stderr, "%s: error: --arch compiles the GPU kernels for the model's dimensions, "
              "but model '%s' cannot be read: %s\n", o->file, g->models[m].name, err);
      return 2;
    }
    poc_dims cd;
    poc_dims_from_config(&cfg, &cd);
    int seen = 0;
    for (int i = 0; i < n && !seen; i++) seen = !memcmp(&dims[i], &cd, sizeof cd);
    if (!seen && n < 64) dims[n++] = cd;
  }
  char path[4200];
  snprintf(path, sizeof path, "%s/cuda_images.c", dir);
  FILE *f = fopen(path, "w");
  if (!f) {
    fprintf(stderr, "poc build: cannot write %s: %s\n", path, strerror(errno));
    return 1;
  }
  fprintf(f, "/* cuda_images.c — generated by poc %s (--arch %s); do not edit.\n * The GPU "
          "kernels for each model config of the program (runtime/program.h). */\n"
          "#include \"program.h\"\n\n", POC_VERSION, o->arch);
  int rc = 0, n_blobs[64];
  uint64_t hash[64];
  for (int k = 0; k < n && !rc; k++) rc = write_kernel_image(f, o, &dims[k], k, &hash[k], &n_blobs[k]);
  if (!rc) {
    fprintf(f, "const poc_kernel_image poc_kernel_images[%d] = {\n", n);
    for (int k = 0; k < n; k++)
      fprintf(f, "    {%d, %d, %d, %d, %d, %d, %.17g, UINT64_C(0x%016llx), %d, img%d_blobs},\n",
              dims[k].H, dims[k].F, dims[k].V, dims[k].nh, dims[k].nkv, dims[k].hd, dims[k].eps,
              (unsigned long long)hash[k], n_blobs[k], k);
    fputs("};\n", f);
  }
  if (fclose(f) && !rc) {
    fprintf(stderr, "poc build: cannot write %s: %s\n", path, strerror(errno));
    rc = 1;
  }
  *n_images = n;
  return rc;
}
#else
static int write_kernel_images(const build_opts *o, const ir_graph *g, const char *dir,
                               int *n_images) {
  (void)o, (void)g, (void)dir;
  *n_images = 0;
  return 0; /* check_arch has refused --arch already */
}
#endif

/* ---- the front and the generator ---------------------------------------------------- */

static int write_sources(const build_opts *o, const char *dir, const char *cc_shown, bool quiet) {
  po_diag *d = po_diag_new(stderr);
  const po_source *src = o->src ? o->src : po_source_read(o->file, d);
  po_program *prog = src ? po_parse(src, d) : NULL;
  if (prog) po_check(prog, d);
  ir_graph *g = prog && !po_diag_errors(d) ? ir_lower(prog, d) : NULL;
  if (!g || po_diag_errors(d)) {
    po_diag_free(d);
    ir_free(g);
    return 2;
  }
  char err[512];
  g->unfused = o->unfused; /* the same pipeline, the fuse pass off */
  if (ir_pipeline(g, NULL, err, sizeof err)) {
    fprintf(stderr, "%s: internal error: %s\n", o->file, err);
    po_diag_free(d);
    ir_free(g);
    return 1;
  }
  cg_options opt = {.unfused = o->unfused, .no_hoist = o->no_hoist, .cc_line = cc_shown};
  cg_prog p;
  int rc = 0;
  if (cg_prepare(&p, prog, g, &opt, d)) rc = 2;
  if (rc == 0) { /* the memplan pass and its verifier; the peak is said before any run */
    cg_memplan mp;
    cg_memplan_run(&p, &mp);
    if (cg_memplan_verify(&mp, err, sizeof err)) {
      fprintf(stderr, "%s: internal error: the verifier rejects the memory plan: %s\n", o->file, err);
      rc = 1;
    } else if (!quiet) {
      cg_memplan_summary(&mp, stdout);
    }
    cg_memplan_free(&mp);
  }
  if (rc == 0 && o->arch) rc = write_kernel_images(o, g, dir, &opt.n_kernel_images);
  char path[4200];
  for (int k = 0; rc == 0 && k < 2; k++) {
    snprintf(path, sizeof path, "%s/%s", dir, k ? "kernels.c" : "plan.c");
    FILE *f = fopen(path, "w");
    if (!f) {
      fprintf(stderr, "poc build: cannot write %s: %s\n", path, strerror(errno));
      rc = 1;
      break;
    }
    if (k ? cg_emit_kernels(f, &p, d) : cg_emit_plan(f, &p, d)) rc = 2;
    if (fclose(f)) {
      fprintf(stderr, "poc build: cannot write %s: %s\n", path, strerror(errno));
      rc = 1;
    }
  }
  cg_release(&p);
  po_diag_free(d);
  ir_free(g);
  return rc;
}

static int check_arch(const build_opts *o) {
  if (!o->arch) return 0;
#ifdef POC_HAVE_CUDA
  /* sm_XY[a] names, comma separated: what NVRTC's --gpu-architecture takes */
  const char *s = o->arch;
  while (*s) {
    if (strncmp(s, "sm_", 3) || s[3] < '1' || s[3] > '9') goto bad;
    s += 3;
    while (*s >= '0' && *s <= '9') s++;
    if (*s == 'a') s++;
    if (*s == ',') s++;
    else if (*s) goto bad;
  }
  return 0;
bad:
  fprintf(stderr, "poc build: --arch takes GPU architectures like sm_80,sm_90 (got '%s')\n", o->arch);
  return 2;
#else
  fprintf(stderr, "poc build: --arch %s: this poc was built without the CUDA backend (no CUDA "
                  "toolkit was found when it was configured); the binary it builds trains on the "
                  "CPU, without --arch\n", o->arch);
  return 2;
#endif
}

/* Builds o->file into o->out; `quiet` leaves out the success message (poc run). */
static int build(const build_opts *o, bool quiet) {
  int rc = check_arch(o);
  if (rc) return rc;
  const poc_home *h = poc_home_get();
  if (!h) return 1;
  for (int i = 0; !o->emit_dir && i < h->nruntime; i++)
    if (!exists(h->runtime[i])) {
      fprintf(stderr, "poc build: the runtime library %s is missing (named by %s); build poc "
                      "or reinstall it\n", h->runtime[i], h->desc);
      return 1;
    }
  char dir[4096];
  if (o->emit_dir) {
    snprintf(dir, sizeof dir, "%s", o->emit_dir);
    if (mkdir(dir, 0755) && errno != EEXIST) {
      fprintf(stderr, "poc build: cannot create %s: %s\n", dir, strerror(errno));
      return 1;
    }
  } else {
    const char *tmp = getenv("TMPDIR");
    snprintf(dir, sizeof dir, "%s/poc-build-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(dir)) {
      fprintf(stderr, "poc build: cannot create a work directory in %s: %s\n",
              tmp && *tmp ? tmp : "/tmp", strerror(errno));
      return 1;
    }
  }
  argv_t cmd = {0};
  link_line(&cmd, h, dir, o->out ? o->out : "a.out");
  char shown[1024];
  shown_line(shown, sizeof shown, &cmd, h);
  rc = write_sources(o, dir, shown, quiet);
  if (rc || o->emit_dir) {
    if (!o->emit_dir) remove_dir(dir);
    arg_free(&cmd);
    return rc;
  }
  add_kernel_images(&cmd, o, dir);
  char log[4200];
  snprintf(log, sizeof log, "%s/cc.log", dir);
  int st = run_logged(cmd.v, log);
  bool keep = getenv("POC_KEEP_C") && strcmp(getenv("POC_KEEP_C"), "0");
  if (st != 0) {
    fprintf(stderr, "poc build: the C compiler failed (exit %d) on the generated sources:\n", st);
    print_file(log, stderr);
    fprintf(stderr, "poc build: generated sources kept in %s (plan.c, kernels.c); the command was:\n ", dir);
    for (int i = 0; i < cmd.n; i++) fprintf(stderr, " %s", cmd.v[i]);
    fputc('\n', stderr);
    arg_free(&cmd);
    return 1;
  }
  if (keep) fprintf(stderr, "poc build: generated sources kept in %s\n", dir);
  else remove_dir(dir);
  if (!quiet) printf("poc build: %s -> %s (%s)\n", o->file, o->out, o->unfused ? "unfused" : "fused");
  arg_free(&cmd);
  return 0;
}

static void build_usage(FILE *f) {
  fprintf(f, "usage: poc build FILE.po -o BIN [--unfused] [--no-hoist] [--arch sm_90,...]\n"
             "       poc build FILE.po --emit-c DIR [--unfused] [--no-hoist]   (sources only)\n");
}

/* Parses build flags from argv[i]; returns 1 when argv[i] (and maybe its value) was one,
 * 0 when not a build flag, -1 on a usage error. */
static int build_flag(build_opts *o, int argc, char **argv, int *i) {
  const char *a = argv[*i];
  if (!strcmp(a, "--unfused")) o->unfused = true;
  else if (!strcmp(a, "--no-hoist")) o->no_hoist = true;
  else if (!strcmp(a, "--arch") || !strcmp(a, "-o") || !strcmp(a, "--emit-c")) {
    if (*i + 1 >= argc) {
      fprintf(stderr, "poc: %s needs a value\n", a);
      return -1;
    }
    const char *v = argv[++*i];
    if (!strcmp(a, "--arch")) o->arch = v;
    else if (!strcmp(a, "-o")) o->out = v;
    else o->emit_dir = v;
  } else if (!strncmp(a, "--arch=", 7)) {
    o->arch = a + 7;
  } else {
    return 0;
  }
  return 1;
}

int poc_cmd_build(int argc, char **argv) {
  build_opts o = {0};
  for (int i = 1; i < argc; i++) {
    int r = build_flag(&o, argc, argv, &i);
    if (r < 0) return 2;
    if (r) continue;
    if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
      build_usage(stdout);
      return 0;
    }
    if (argv[i][0] == '-') {
      fprintf(stderr, "poc build: unknown option '%s'\n", argv[i]);
      build_usage(stderr);
      return 2;
    }
    if (o.file) {
      fprintf(stderr, "poc build: one .po file at a time ('%s' is extra)\n", argv[i]);
      return 2;
    }
    o.file = argv[i];
  }
  if (!o.file || (!o.out && !o.emit_dir)) {
    build_usage(stderr);
    return 2;
  }
  return build(&o, false);
}

/* ---- poc run ---------------------------------------------------------------------- */
/* The cache trusts nothing it reads back. An entry is one file, NAME-KEY: the binary as
 * the C compiler wrote it, then a trailer (below) with its size and a hash of its bytes.
 * The trailer is checked before every exec, so an entry truncated by a full disk, a
 * crash or a careless hand, emptied, or with a byte changed is reported in one line,
 * removed and built again, where it used to crash or fail with "exec format error" on
 * every run. The trailer sits behind the ELF image, which the loader never reads.
 * Because a damaged entry is caught and rebuilt, no fsync is needed: a power loss can
 * only cost a rebuild.
 *
 * Builds go to NAME-KEY.tmp-PID-HOST and are renamed into place, so concurrent runs of one .po each build and
 * each succeed, the last rename winning; a running binary keeps its own inode. A build
 * that was interrupted leaves its temporaries behind: every poc run removes those whose
 * process is gone (same host) or that are older than an hour (any host, for a cache on
 * a shared file system). */

typedef struct cache_trailer {
  char magic[8];  /* TRAILER_MAGIC */
  uint64_t size;  /* bytes of the binary before the trailer */
  uint64_t hash;  /* FNV-1a 64 of those bytes */
} cache_trailer;

#define TRAILER_MAGIC "POCRUN01"
#define FNV_INIT 0xcbf29ce484222325ULL

/* FNV-1a, 64 bits. */
static uint64_t fnv(uint64_t h, const void *data, size_t n) {
  const unsigned char *p = data;
  for (size_t i = 0; i < n; i++) {
    h ^= p[i];
    h *= 0x100000001b3ULL;
  }
  return h;
}

/* Hashes the first `len` bytes of fd from offset 0 into *h; -1 on a read error or an
 * early end. */
static int hash_fd(int fd, uint64_t len, uint64_t *h) {
  char buf[65536];
  uint64_t off = 0;
  while (off < len) {
    size_t want = len - off < sizeof buf ? (size_t)(len - off) : sizeof buf;
    ssize_t r = pread(fd, buf, want, (off_t)off);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return -1;
    *h = fnv(*h, buf, (size_t)r);
    off += (uint64_t)r;
  }
  return 0;
}

static int mkdirs(char *path) {
  for (char *s = path + 1; *s; s++) {
    if (*s != '/') continue;
    *s = 0;
    int r = mkdir(path, 0755);
    *s = '/';
    if (r && errno != EEXIST) return -1;
  }
  return mkdir(path, 0755) && errno != EEXIST ? -1 : 0;
}

/* poc's own identity for the key: a hash of its executable's bytes. A rebuilt poc may
 * generate different code under the same version number, and size + mtime would miss
 * a copy that kept its mtime (cp -p, install -p, a package) or a rebuild within the
 * same second; a build id is not always linked in. The bytes cost one read of a file
 * under a megabyte, about a millisecond, against seconds for a C compile. */
static uint64_t self_hash(void) {
  int fd = open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
  struct stat st;
  uint64_t h = FNV_INIT;
  if (fd < 0 || fstat(fd, &st) || hash_fd(fd, (uint64_t)st.st_size, &h)) {
    /* no /proc: the version and build flags still key the entry */
    if (fd >= 0) close(fd);
    return 0;
  }
  close(fd);
  return h;
}

static uint32_t host_tag(void) {
  char host[256] = "";
  gethostname(host, sizeof host - 1);
  return (uint32_t)fnv(FNV_INIT, host, strlen(host));
}

/* Removes the temporaries of builds that did not finish (see above). */
static void clean_stale(const char *dir) {
  DIR *dp = opendir(dir);
  if (!dp) return;
  uint32_t me = host_tag();
  time_t now = time(NULL);
  char path[4400];
  for (struct dirent *e; (e = readdir(dp));) {
    const char *t = strstr(e->d_name, ".tmp-");
    if (!t) continue;
    snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
    struct stat st;
    if (lstat(path, &st)) continue;
    long pid = 0;
    unsigned host = 0;
    bool parsed = sscanf(t, ".tmp-%ld-%8x", &pid, &host) == 2 && pid > 0;
    bool old = now - st.st_mtime > 3600;
    bool gone = parsed && host == me && kill((pid_t)pid, 0) && errno == ESRCH;
    if (S_ISREG(st.st_mode) && (old || gone)) unlink(path);
  }
  closedir(dp);
}

/* 1: a sound entry; 0: none; -1: damaged, with the reason in why. */
static int verify_entry(const char *bin, char *why, size_t n) {
  int fd = open(bin, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return 0;
    snprintf(why, n, "cannot open it: %s", strerror(errno));
    return -1;
  }
  struct stat st;
  cache_trailer t;
  int rc = -1;
  if (fstat(fd, &st)) {
    snprintf(why, n, "cannot stat it: %s", strerror(errno));
  } else if (!S_ISREG(st.st_mode)) {
    snprintf(why, n, "not a regular file");
  } else if ((uint64_t)st.st_size < sizeof t) {
    snprintf(why, n, "%lld bytes, too short to hold its record", (long long)st.st_size);
  } else if (pread(fd, &t, sizeof t, st.st_size - (off_t)sizeof t) != (ssize_t)sizeof t ||
             memcmp(t.magic, TRAILER_MAGIC, 8)) {
    snprintf(why, n, "no size and hash record at its end (truncated, or not written by poc run)");
  } else if (t.size != (uint64_t)st.st_size - sizeof t) {
    snprintf(why, n, "%lld bytes where its record says %llu", (long long)(st.st_size - (off_t)sizeof t),
             (unsigned long long)t.size);
  } else {
    uint64_t h = FNV_INIT;
    if (hash_fd(fd, t.size, &h)) snprintf(why, n, "cannot read it: %s", strerror(errno));
    else if (h != t.hash) snprintf(why, n, "its content does not match its hash");
    else if (!(st.st_mode & S_IXUSR)) snprintf(why, n, "not executable");
    else rc = 1;
  }
  close(fd);
  return rc;
}

/* Appends the trailer to the binary the C compiler wrote at path. */
static int seal(const char *path) {
  int fd = open(path, O_RDWR | O_CLOEXEC);
  struct stat st;
  if (fd < 0 || fstat(fd, &st)) {
    if (fd >= 0) close(fd);
    return -1;
  }
  cache_trailer t;
  memcpy(t.magic, TRAILER_MAGIC, 8);
  t.size = (uint64_t)st.st_size;
  t.hash = FNV_INIT;
  int rc = hash_fd(fd, t.size, &t.hash);
  if (!rc && pwrite(fd, &t, sizeof t, st.st_size) != (ssize_t)sizeof t) rc = -1;
  if (close(fd)) rc = -1;
  return rc;
}

int poc_cmd_run(int argc, char **argv) {
  build_opts o = {0};
  int first_bin = argc;
  for (int i = 1; i < argc; i++) {
    /* poc's own flags come before the file; everything after it goes to the binary */
    if (!o.file) {
      int r = build_flag(&o, argc, argv, &i);
      if (r < 0) return 2;
      if (r) {
        if (o.out || o.emit_dir) {
          fprintf(stderr, "poc run: -o and --emit-c belong to poc build\n");
          return 2;
        }
        continue;
      }
      if (argv[i][0] == '-') {
        fprintf(stderr, "poc run: unknown option '%s' before the .po file\n"
                        "usage: poc run [--unfused] [--no-hoist] FILE.po [BIN flags]\n", argv[i]);
        return 2;
      }
      o.file = argv[i];
      first_bin = i + 1;
      break;
    }
  }
  if (!o.file) {
    fprintf(stderr, "usage: poc run [--unfused] [--no-hoist] FILE.po [BIN flags]\n");
    return 2;
  }
  /* read once: what is hashed is what is built */
  po_diag *d = po_diag_new(stderr);
  o.src = po_source_read(o.file, d);
  po_diag_free(d);
  if (!o.src) return 2;
  uint64_t h = fnv(FNV_INIT, o.src->text, o.src->len);
  char flags[320];
  snprintf(flags, sizeof flags, "|poc %s %016llx|unfused=%d|no_hoist=%d|arch=%s|", POC_VERSION,
           (unsigned long long)self_hash(), o.unfused, o.no_hoist, o.arch ? o.arch : "");
  h = fnv(h, flags, strlen(flags));
  /* the installation it links against: where it is, its link description (a different
   * BLAS build means a different binary) and its runtime libraries' size and mtime
   * (rebuilding or reinstalling poc's runtime invalidates the cache) */
  const poc_home *ph = poc_home_get();
  if (!ph) return 1;
  h = fnv(h, ph->root, strlen(ph->root) + 1);
  h = fnv(h, ph->text, strlen(ph->text) + 1);
  for (int i = 0; i < ph->nruntime; i++) {
    struct stat st;
    if (stat(ph->runtime[i], &st) == 0) {
      int64_t sm[2] = {(int64_t)st.st_size, (int64_t)st.st_mtime};
      h = fnv(h, sm, sizeof sm);
    }
  }
  /* the templates are part of what is generated */
  size_t tl;
  char *t = cg_template("objective.c", &tl);
  if (t) h = fnv(h, t, tl);
  free(t);

  char dir[4096];
  const char *c = getenv("POC_CACHE_DIR"), *x = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
  if (c && *c) snprintf(dir, sizeof dir, "%s", c);
  else if (x && *x) snprintf(dir, sizeof dir, "%s/poc", x);
  else if (home && *home) snprintf(dir, sizeof dir, "%s/.cache/poc", home);
  else snprintf(dir, sizeof dir, "/tmp/poc-cache");
  if (mkdirs(dir)) {
    fprintf(stderr, "poc run: cannot create the cache directory %s: %s\n", dir, strerror(errno));
    return 1;
  }
  clean_stale(dir);
  const char *base = cg_base(o.file);
  size_t bl = strcspn(base, ".");
  char name[64];
  snprintf(name, sizeof name, "%.*s", (int)(bl < 32 ? bl : 32), base);
  for (char *s = name; *s; s++)
    if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') || *s == '_' || *s == '-'))
      *s = '_';
  char bin[4200];
  snprintf(bin, sizeof bin, "%s/%s-%016llx", dir, name[0] ? name : "po", (unsigned long long)h);
  char why[256];
  int v = verify_entry(bin, why, sizeof why);
  if (v < 0) {
    fprintf(stderr, "poc run: the cached binary %s is damaged: %s; removing it and building "
                    "again\n", bin, why);
    unlink(bin);
  }
  if (v <= 0) {
    char tmp[4300];
    snprintf(tmp, sizeof tmp, "%s.tmp-%ld-%08x", bin, (long)getpid(), (unsigned)host_tag());
    o.out = tmp;
    int rc = build(&o, true);
    if (rc) {
      unlink(tmp);
      return rc;
    }
    if (seal(tmp)) {
      fprintf(stderr, "poc run: cannot write %s: %s\n", tmp, strerror(errno));
      unlink(tmp);
      return 1;
    }
    if (rename(tmp, bin)) {
      fprintf(stderr, "poc run: cannot move the binary into %s: %s\n", bin, strerror(errno));
      unlink(tmp);
      return 1;
    }
    fprintf(stderr, "poc run: built %s\n", bin);
  }
  argv_t args = {0};
  arg_push(&args, bin);
  for (int i = first_bin; i < argc; i++) arg_push(&args, argv[i]);
  fflush(stdout);
  fflush(stderr);
  execv(bin, args.v);
  fprintf(stderr, "poc run: cannot run %s: %s\n", bin, strerror(errno));
  arg_free(&args);
  return 1;
}
