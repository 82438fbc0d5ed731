/* test_st.c — the safetensors reader and writer: exact element conversion from known bit
 * patterns, files written by hand, every kind of broken file, the writer's round trip. */
#include <dirent.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "../check.h"
#include "mio.h"
#include "pocrt.h"
#include "st.h"

static uint32_t f32_bits(float x) {
  uint32_t u;
  memcpy(&u, &x, 4);
  return u;
}

static float bits_f32(uint32_t u) {
  float x;
  memcpy(&x, &u, 4);
  return x;
}

static void test_bf16_convert(void) {
  CHECK(st_bf16_to_f32(0x3f80) == 1.0f);
  CHECK(st_bf16_to_f32(0xc040) == -3.0f);
  CHECK(st_bf16_to_f32(0x4049) == 3.140625f);
  float nz = st_bf16_to_f32(0x8000);
  CHECK(nz == 0 && signbit(nz));
  CHECK(st_bf16_to_f32(0x0001) == ldexpf(1, -133));      /* smallest subnormal */
  CHECK(st_bf16_to_f32(0x807f) == -ldexpf(127, -133));    /* largest negative subnormal */
  CHECK(isinf(st_bf16_to_f32(0x7f80)) && st_bf16_to_f32(0x7f80) > 0);
  CHECK(isinf(st_bf16_to_f32(0xff80)) && st_bf16_to_f32(0xff80) < 0);
  CHECK(isnan(st_bf16_to_f32(0x7fc0)));
  CHECK(isnan(st_bf16_to_f32(0xffc1)));

  /* float → bf16: round to nearest, ties to even, no NaN → inf accident. */
  CHECK(st_f32_to_bf16(1.0f) == 0x3f80);
  CHECK(st_f32_to_bf16(bits_f32(0x3f808000)) == 0x3f80);  /* tie, even below */
  CHECK(st_f32_to_bf16(bits_f32(0x3f818000)) == 0x3f82);  /* tie, even above */
  CHECK(st_f32_to_bf16(bits_f32(0x3f808001)) == 0x3f81);  /* just above the tie */
  CHECK(st_f32_to_bf16(bits_f32(0x3f807fff)) == 0x3f80);  /* just below */
  CHECK(st_f32_to_bf16(bits_f32(0x7f7fffff)) == 0x7f80);  /* FLT_MAX rounds to inf */
  CHECK(st_f32_to_bf16(-0.0f) == 0x8000);
  CHECK(st_f32_to_bf16(INFINITY) == 0x7f80);
  CHECK(st_f32_to_bf16(-INFINITY) == 0xff80);
  CHECK(isnan(st_bf16_to_f32(st_f32_to_bf16(bits_f32(0x7fffffff)))));
  CHECK(isnan(st_bf16_to_f32(st_f32_to_bf16(bits_f32(0x7f800001)))));  /* signalling payload low */
  /* every bf16 value survives the trip through float */
  int bad = 0;
  for (uint32_t h = 0; h < 65536; h++) {
    float x = st_bf16_to_f32((uint16_t)h);
    if (!isnan(x) && st_f32_to_bf16(x) != h) bad++;
  }
  CHECK_MSG(bad == 0, "%d bf16 values do not round-trip", bad);
}

static void test_f16_convert(void) {
  CHECK(st_f16_to_f32(0x3c00) == 1.0f);
  CHECK(st_f16_to_f32(0xc000) == -2.0f);
  CHECK(st_f16_to_f32(0x3555) == 0.333251953125f);
  float nz = st_f16_to_f32(0x8000);
  CHECK(nz == 0 && signbit(nz));
  CHECK(st_f16_to_f32(0x0001) == ldexpf(1, -24));
  CHECK(st_f16_to_f32(0x03ff) == ldexpf(1023, -24));
  CHECK(st_f16_to_f32(0x8200) == -ldexpf(512, -24));
  CHECK(st_f16_to_f32(0x0400) == ldexpf(1, -14));
  CHECK(st_f16_to_f32(0x7bff) == 65504.0f);
  CHECK(isinf(st_f16_to_f32(0x7c00)) && st_f16_to_f32(0x7c00) > 0);
  CHECK(isinf(st_f16_to_f32(0xfc00)) && st_f16_to_f32(0xfc00) < 0);
  CHECK(isnan(st_f16_to_f32(0x7e00)));
  CHECK(isnan(st_f16_to_f32(0x7c01)));
  /* exhaustive, against a definition from the format: (-1)^s · 2^(e-15) · (1 + m/1024) */
  int bad = 0;
  for (uint32_t h = 0; h < 65536; h++) {
    int s = h >> 15, e = (h >> 10) & 31, m = h & 1023;
    double want = e == 0 ? ldexp(m, -24) : e == 31 ? (m ? NAN : INFINITY) : ldexp(1024 + m, e - 25);
    if (s) want = -want;
    float got = st_f16_to_f32((uint16_t)h);
    if (isnan(want) ? !isnan(got) : (got != want || !signbit(got) != !signbit(want))) bad++;
  }
  CHECK_MSG(bad == 0, "%d f16 bit patterns convert wrongly", bad);
}

/* A file written by hand with one tensor of each float dtype, listed out of offset
 * order (valid), read back to known values in float and double. */
static void test_read_by_hand(void) {
  unsigned char data[64];
  size_t k = 0;
  /* "h" F16 [2,2] at 0..8: 1, -0, smallest subnormal, inf */
  uint16_t f16[4] = {0x3c00, 0x8000, 0x0001, 0x7c00};
  memcpy(data + k, f16, 8), k += 8;
  /* "b" BF16 [3] at 8..14: 3.140625, -0, largest subnormal */
  uint16_t bf[3] = {0x4049, 0x8000, 0x007f};
  memcpy(data + k, bf, 6), k += 6;
  /* "f" F32 [2] at 14..22 (unaligned on purpose): 0.1f, -inf */
  float f32[2] = {0.1f, -INFINITY};
  memcpy(data + k, f32, 8), k += 8;
  /* "d" F64 [1] at 22..30 */
  double f64 = 1.0 / 3.0;
  memcpy(data + k, &f64, 8), k += 8;
  /* "e" F32 [0, 4] at 30..30: empty */
  const char *hdr =
      "{\"d\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[22,30]},"
      "\"__metadata__\":{\"format\":\"pt\"},"
      "\"b\":{\"dtype\":\"BF16\",\"shape\":[3],\"data_offsets\":[8,14]},"
      "\"h\":{\"dtype\":\"F16\",\"shape\":[2,2],\"data_offsets\":[0,8]},"
      "\"e\":{\"dtype\":\"F32\",\"shape\":[0,4],\"data_offsets\":[30,30]},"
      "\"f\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[14,22]}}  ";
  unsigned char file[1024];
  size_t n = mio_st_bytes(file, hdr, data, k);
  const char *path = mio_path("hand.safetensors");
  mio_write(path, file, n);

  st_file f;
  char err[POC_ERR_LEN] = "";
  CHECK_MSG(st_open(&f, path, err) == 0, "%s", err);
  if (f.n != 5) {
    CHECK(f.n == 5);
    st_close(&f);
    return;
  }
  const st_tensor *h = st_find(&f, "h"), *b = st_find(&f, "b"), *t = st_find(&f, "f"),
                  *d = st_find(&f, "d"), *e = st_find(&f, "e");
  CHECK(h && b && t && d && e && !st_find(&f, "__metadata__") && !st_find(&f, "x"));
  CHECK(h && h->dtype == ST_F16 && h->ndim == 2 && h->shape[0] == 2 && h->numel == 4);
  CHECK(e && e->numel == 0 && e->ndim == 2);
  float o[4];
  double od[4];
  CHECK(st_read_f32(&f, h, o, err) == 0);
  CHECK(o[0] == 1 && o[1] == 0 && signbit(o[1]) && o[2] == ldexpf(1, -24) && isinf(o[3]));
  CHECK(st_read_f64(&f, h, od, err) == 0);
  CHECK(od[0] == 1 && signbit(od[1]) && od[2] == ldexp(1, -24) && isinf(od[3]));
  CHECK(st_read_f32(&f, b, o, err) == 0);
  CHECK(o[0] == 3.140625f && o[1] == 0 && signbit(o[1]) && o[2] == ldexpf(127, -133));
  CHECK(st_read_f32(&f, t, o, err) == 0);
  CHECK(f32_bits(o[0]) == f32_bits(0.1f) && isinf(o[1]) && o[1] < 0);
  CHECK(st_read_f64(&f, t, od, err) == 0);
  CHECK(od[0] == (double)0.1f);
  CHECK(st_read_f64(&f, d, od, err) == 0);
  CHECK(od[0] == 1.0 / 3.0);
  CHECK(st_read_f32(&f, d, o, err) == 0);
  CHECK(o[0] == (float)(1.0 / 3.0));
  st_close(&f);
}

/* st_open must fail with a message naming the file and containing `want`. */
static void expect_open_error(const char *name, const unsigned char *bytes, size_t n, const char *want) {
  const char *path = mio_path(name);
  mio_write(path, bytes, n);
  st_file f;
  char err[POC_ERR_LEN] = "";
  int rc = st_open(&f, path, err);
  CHECK_MSG(rc == -1, "%s: opened a broken file", name);
  if (rc == 0) {
    st_close(&f);
    return;
  }
  CHECK_MSG(strstr(err, path) != NULL, "%s: message does not name the file: %s", name, err);
  CHECK_MSG(strstr(err, want) != NULL, "%s: message '%s' lacks '%s'", name, err, want);
}

static void expect_header_error(const char *name, const char *hdr, size_t ndata, const char *want) {
  static unsigned char buf[4096], zeros[512];
  size_t n = mio_st_bytes(buf, hdr, zeros, ndata);
  expect_open_error(name, buf, n, want);
}

static void test_broken_files(void) {
  const char *good =
      "{\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]},"
      "\"b\":{\"dtype\":\"BF16\",\"shape\":[4],\"data_offsets\":[24,32]}}";
  unsigned char buf[1024], zeros[64] = {0};
  size_t n = mio_st_bytes(buf, good, zeros, 32);
  /* sanity: the untouched file opens */
  const char *path = mio_path("good.safetensors");
  mio_write(path, buf, n);
  st_file f;
  char err[POC_ERR_LEN] = "";
  CHECK_MSG(st_open(&f, path, err) == 0, "%s", err);
  st_close(&f);

  /* truncated at every interesting place: the length, the header, the data */
  size_t hlen = strlen(good);
  size_t cuts[] = {0, 3, 7, 8, 9, 8 + hlen / 2, 8 + hlen - 1, 8 + hlen, 8 + hlen + 10, n - 1};
  const char *why[] = {"too short", "too short", "too short", "header length", "header length",
                       "header length", "header length", "past the end", "past the end", "past the end"};
  for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
    char nm[64];
    snprintf(nm, sizeof nm, "trunc%zu.safetensors", cuts[i]);
    expect_open_error(nm, buf, cuts[i], why[i]);
  }
  /* a header length far beyond the file, and one with the top bit set */
  unsigned char big[16];
  memcpy(big, buf, 16);
  big[5] = 0x01;
  expect_open_error("biglen.safetensors", big, 16, "header length");
  memcpy(big, buf, 16);
  big[7] = 0x80;
  expect_open_error("hugelen.safetensors", big, 16, "header length");

  expect_header_error("badjson.safetensors", "{\"a\":{\"dtype\":\"F32\",", 0, "not valid JSON");
  expect_header_error("array.safetensors", "[1,2,3]", 0, "not a JSON object");
  expect_header_error("trailing.safetensors", "{}xyz", 0, "trailing");
  expect_header_error("notobj.safetensors", "{\"a\":5}", 0, "'a' is not an object");
  expect_header_error("nodtype.safetensors", "{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
                      "'a': missing or non-string \"dtype\"");
  expect_header_error("unkdtype.safetensors",
                      "{\"a\":{\"dtype\":\"F12\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
                      "'a': unknown dtype 'F12'");
  expect_header_error("noshape.safetensors", "{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4,
                      "'a': missing or non-array \"shape\"");
  expect_header_error("negshape.safetensors",
                      "{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4,
                      "shape[0] is not a non-negative integer");
  expect_header_error("fracshape.safetensors",
                      "{\"a\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", 4,
                      "shape[0] is not a non-negative integer");
  expect_header_error("hugeshape.safetensors",
                      "{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,4]}}",
                      4, "impossibly large");
  expect_header_error("offs1.safetensors", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}",
                      4, "\"data_offsets\" must be two");
  expect_header_error("offsback.safetensors",
                      "{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,0]}}", 4, "backwards");
  expect_header_error("pastend.safetensors",
                      "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 12,
                      "'a': data_offsets [0, 16] run past the end");
  expect_header_error("wrongsize.safetensors",
                      "{\"a\":{\"dtype\":\"BF16\",\"shape\":[4],\"data_offsets\":[0,16]}}", 16,
                      "'a': 4 elements of BF16 need 8 bytes but data_offsets span 16");
  expect_header_error("overlap.safetensors",
                      "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
                      "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[12,20]}}",
                      20, "'a' [0, 16] and 'b' [12, 20] overlap");
  expect_header_error("samerange.safetensors",
                      "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                      "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
                      8, "overlap");
  expect_header_error("overlap-past-empty.safetensors",
                      "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
                      "\"e\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,4]},"
                      "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}",
                      16, "'a' [0, 16] and 'b' [8, 12] overlap");
  expect_header_error("dup.safetensors",
                      "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                      "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
                      8, "'a' appears twice");
  expect_header_error("badmeta.safetensors", "{\"__metadata__\":3}", 0, "__metadata__");

  /* a valid file whose tensor is not floating point: opens, refuses to convert */
  n = mio_st_bytes(buf, "{\"ids\":{\"dtype\":\"I64\",\"shape\":[2],\"data_offsets\":[0,16]}}", zeros, 16);
  path = mio_path("int.safetensors");
  mio_write(path, buf, n);
  CHECK_MSG(st_open(&f, path, err) == 0, "%s", err);
  float o[2];
  CHECK(st_read_f32(&f, st_find(&f, "ids"), o, err) == -1 && strstr(err, "'ids' has dtype I64"));
  st_close(&f);

  CHECK(st_open(&f, mio_path("does-not-exist.safetensors"), err) == -1 && strstr(err, "cannot open"));
  CHECK(st_open(&f, mio_root, err) == -1 && strstr(err, "not a regular file"));
}

/* Every prefix of a valid file either opens (never: the data is needed) or fails cleanly. */
static void test_every_truncation(void) {
  const char *hdr =
      "{\"x\":{\"dtype\":\"F16\",\"shape\":[3],\"data_offsets\":[0,6]},"
      "\"y\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[6,10]}}";
  unsigned char buf[512], data[10] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
  size_t n = mio_st_bytes(buf, hdr, data, 10);
  const char *path = mio_path("prefix.safetensors");
  int failed = 0;
  for (size_t cut = 0; cut < n; cut++) {
    mio_write(path, buf, cut);
    st_file f;
    char err[POC_ERR_LEN] = "";
    if (st_open(&f, path, err) == 0) st_close(&f);
    else failed++;
  }
  CHECK(failed == (int)n);
}

static void test_writer(void) {
  float a[6] = {1.5f, -0.0f, INFINITY, -INFINITY, bits_f32(0x00000001), bits_f32(0x7fc00123)};
  float b[5] = {0.1f, -3.3f, 1e-30f, 65504.f, bits_f32(0x3f808000)};
  st_out outs[3] = {
      {"zeta.weight", 2, {2, 3}, a},
      {"alpha.bias", 1, {5}, b},
      {"empty", 2, {0, 7}, b},
  };
  char err[POC_ERR_LEN] = "";
  const char *path = mio_path("w32.safetensors");
  CHECK_MSG(st_write_f32(path, outs, 3, "F32", err) == 0, "%s", err);
  size_t n;
  unsigned char *bytes = mio_read(path, &n);
  CHECK(bytes && n >= 8);
  if (bytes) {
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--) hl = hl << 8 | bytes[i];
    CHECK((8 + hl) % 8 == 0);
    CHECK(n == 8 + hl + 44);
    /* names sorted: alpha.bias before empty before zeta.weight, metadata present */
    const char *h = (const char *)bytes + 8;
    const char *pa = strstr(h, "alpha.bias"), *pe = strstr(h, "\"empty\""), *pz = strstr(h, "zeta.weight");
    CHECK(pa && pe && pz && pa < pe && pe < pz);
    CHECK(strstr(h, "\"__metadata__\":{\"format\":\"pt\"}") != NULL);
    free(bytes);
  }
  st_file f;
  CHECK_MSG(st_open(&f, path, err) == 0, "%s", err);
  float o[6];
  const st_tensor *t = st_find(&f, "zeta.weight");
  CHECK(t && t->dtype == ST_F32 && t->shape[0] == 2 && t->shape[1] == 3);
  CHECK(t && st_read_f32(&f, t, o, err) == 0);
  int same = 1;
  for (int i = 0; i < 6; i++) same &= f32_bits(o[i]) == f32_bits(a[i]);
  CHECK_MSG(same, "F32 round trip is not bit-identical");
  t = st_find(&f, "alpha.bias");
  CHECK(t && st_read_f32(&f, t, o, err) == 0);
  same = 1;
  for (int i = 0; i < 5; i++) same &= f32_bits(o[i]) == f32_bits(b[i]);
  CHECK(same);
  CHECK(st_find(&f, "empty") && st_find(&f, "empty")->numel == 0);
  st_close(&f);

  path = mio_path("w16.safetensors");
  CHECK_MSG(st_write_f32(path, outs, 2, "BF16", err) == 0, "%s", err);
  CHECK_MSG(st_open(&f, path, err) == 0, "%s", err);
  t = st_find(&f, "alpha.bias");
  CHECK(t && t->dtype == ST_BF16 && t->end - t->begin == 10);
  CHECK(t && st_read_f32(&f, t, o, err) == 0);
  same = 1;
  for (int i = 0; i < 5; i++) same &= f32_bits(o[i]) == f32_bits(st_bf16_to_f32(st_f32_to_bf16(b[i])));
  CHECK(same);
  CHECK(o[4] == 1.0f);  /* the tie rounded to even */
  st_close(&f);

  CHECK(st_write_f32(mio_path("bad.safetensors"), outs, 1, "F16", err) == -1 && strstr(err, "F16"));
  st_out dup[2] = {{"a", 1, {1}, b}, {"a", 1, {1}, b}};
  CHECK(st_write_f32(mio_path("dup.safetensors"), dup, 2, "F32", err) == -1 && strstr(err, "twice"));
  CHECK(st_write_f32("/nonexistent-folder/x.safetensors", outs, 1, "F32", err) == -1 &&
        strstr(err, "cannot create"));

  /* no temporary files are left behind */
  DIR *d = opendir(mio_root);
  int tmp = 0;
  for (struct dirent *e; d && (e = readdir(d));) tmp += strstr(e->d_name, ".tmp.") != NULL;
  if (d) closedir(d);
  CHECK(tmp == 0);
}

int main(int argc, char **argv) {
  mio_init(argc, argv, "st");
  test_bf16_convert();
  test_f16_convert();
  test_read_by_hand();
  test_broken_files();
  test_every_truncation();
  test_writer();
  return check_summary("model_io_st");
}
