/* devices.c — the registry: the one file that knows every device. The runtime core
 * (model, training loop) is handed a device or an opener and knows none of them, so the
 * layering has no circles: core ← cpu device, core ← cuda device, all three ← registry.
 */
#include <stdio.h>
#include <string.h>

#include "device.h"

static poc_device *open_cpu_bf16(char *err) {
#ifdef POC_HAVE_DNNL
  return poc_cpu_bf16_device_open(err);
#else
  snprintf(err, POC_ERR_LEN, "this poc was built without oneDNN, which the bf16 CPU device "
           "needs; Debian: libdnnl-dev");
  return NULL;
#endif
}

poc_device *poc_device_open(const char *name, char *err) {
  if (!strcmp(name, "cpu")) return poc_cpu_device_open(0, err);
  if (!strcmp(name, "cpu64")) return poc_cpu_device_open(1, err);
  if (!strcmp(name, "cpu-bf16")) return open_cpu_bf16(err);
  int bf16 = !strcmp(name, "auto-bf16");
  if (!strcmp(name, "cuda") || !strcmp(name, "auto") || bf16) {
#ifdef POC_HAVE_CUDA
    poc_device *d = poc_cuda_device_open(err);
    if (d || !strcmp(name, "cuda")) return d;
#else
    if (!strcmp(name, "cuda")) {
      snprintf(err, POC_ERR_LEN, "this poc was built without CUDA");
      return NULL;
    }
#endif
    /* auto: no usable GPU, so the CPU */
    return bf16 ? open_cpu_bf16(err) : poc_cpu_device_open(0, err);
  }
  snprintf(err, POC_ERR_LEN, "unknown device '%s' (cpu, cuda, cpu64 or cpu-bf16)", name);
  return NULL;
}

void poc_device_close(poc_device *d) {
  if (d) d->close(d);
}

int poc_train_main(const poc_program *prog, int argc, char **argv) {
#ifdef POC_HAVE_CUDA
  /* before any device opens: the CUDA device takes its kernels from here when it can */
  poc_cuda_use_images(prog->kernel_images, prog->n_kernel_images);
#endif
  return poc_train_run(prog, poc_device_open, argc, argv);
}
