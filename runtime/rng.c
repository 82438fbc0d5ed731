/* rng.c — splitmix64: one 64-bit word of state, so checkpoints save it whole and a
 * resumed run draws the same numbers an unbroken one would. Streams for a purpose are
 * derived from (seed, a, b) by hashing, which keeps draws independent of scheduling
 * (micro-batch size, number of ranks). */
#include "pocrt.h"

static uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

void poc_rng_seed(poc_rng *r, uint64_t seed) { r->s = mix64(seed + 0x9e3779b97f4a7c15ULL); }

uint64_t poc_rng_next(poc_rng *r) {
  r->s += 0x9e3779b97f4a7c15ULL;
  return mix64(r->s);
}

double poc_rng_uniform(poc_rng *r) { return (double)(poc_rng_next(r) >> 11) * 0x1.0p-53; }

poc_rng poc_rng_derive(uint64_t seed, uint64_t a, uint64_t b) {
  poc_rng r;
  r.s = mix64(mix64(mix64(seed) ^ (a + 0x632be59bd9b4e019ULL)) ^ (b + 0x85157af5ULL));
  return r;
}
