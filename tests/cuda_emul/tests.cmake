# The CUDA emulation (test-only; never installed, never linked into poc): libpoc_cuemu.so
# stands in for the driver, NVRTC and cuBLAS when POC_CUDA_EMULATE names it, so the CUDA
# backend's code runs on every change, on machines without a GPU. docs/cuda.md describes it.
if(TARGET pocrt_cuda)
  add_library(poc_cuemu SHARED
    ${CMAKE_CURRENT_LIST_DIR}/cuemu_driver.c
    ${CMAKE_CURRENT_LIST_DIR}/cuemu_nvrtc.c
    ${CMAKE_CURRENT_LIST_DIR}/cuemu_cublas.c)
  target_include_directories(poc_cuemu PRIVATE ${CMAKE_CURRENT_LIST_DIR})
  target_include_directories(poc_cuemu SYSTEM PRIVATE ${CUDAToolkit_INCLUDE_DIRS})
  # kernels are compiled at run time with -include of the emulation header, found here
  target_compile_definitions(poc_cuemu PRIVATE
    POC_CUEMU_HEADER="${CMAKE_CURRENT_LIST_DIR}/cuda_emul.h")
  target_link_libraries(poc_cuemu PRIVATE ${CMAKE_DL_LIBS})
  set(POC_CUEMU_ENV "POC_CUDA_EMULATE=$<TARGET_FILE:poc_cuemu>")

  # the emulation itself: scheduling, barriers, warps, memory checks, NVRTC, cuBLAS;
  # under two seeds of the thread order
  add_executable(test_cuda_emul ${CMAKE_CURRENT_LIST_DIR}/test_cuda_emul.c)
  target_include_directories(test_cuda_emul PRIVATE ${PROJECT_SOURCE_DIR}/tests)
  target_link_libraries(test_cuda_emul PRIVATE pocrt pocrt_cuda)
  add_dependencies(test_cuda_emul poc_cuemu)
  foreach(seed 1 2)
    add_test(NAME cuda_emul_self_seed${seed} COMMAND test_cuda_emul)
    set_tests_properties(cuda_emul_self_seed${seed} PROPERTIES LABELS "unit;cuda_emul" TIMEOUT 120
      ENVIRONMENT "${POC_CUEMU_ENV};POC_CUDA_EMU_SEED=${seed}")
  endforeach()

  # the CUDA model against the CPU one (tests/gpu/test_cuda_model.c), on the emulation:
  # here a failure to open the device is a failure, not a skip
  add_executable(test_cuda_emul_model ${PROJECT_SOURCE_DIR}/tests/gpu/test_cuda_model.c)
  target_include_directories(test_cuda_emul_model PRIVATE ${PROJECT_SOURCE_DIR}/tests)
  target_link_libraries(test_cuda_emul_model PRIVATE pocrt pocrt_cuda)
  add_dependencies(test_cuda_emul_model poc_cuemu)
  add_test(NAME cuda_emul_model COMMAND test_cuda_emul_model)
  # (OpenMP threads of the CPU reference sleep between loops rather than spin: the
  # emulation runs on one core and needs it)
  set_tests_properties(cuda_emul_model PROPERTIES LABELS "cuda_emul" TIMEOUT 300
    ENVIRONMENT "${POC_CUEMU_ENV};OMP_WAIT_POLICY=PASSIVE")

  # every kernel of device.h on the emulated device against the cpu device, same inputs
  add_executable(test_emul_kernels ${CMAKE_CURRENT_LIST_DIR}/test_emul_kernels.c)
  target_include_directories(test_emul_kernels PRIVATE ${PROJECT_SOURCE_DIR}/tests)
  target_link_libraries(test_emul_kernels PRIVATE pocrt pocrt_cuda)
  add_dependencies(test_emul_kernels poc_cuemu)
  add_test(NAME cuda_emul_kernels COMMAND test_emul_kernels)
  set_tests_properties(cuda_emul_kernels PROPERTIES LABELS "cuda_emul" TIMEOUT 300
    ENVIRONMENT "${POC_CUEMU_ENV};OMP_WAIT_POLICY=PASSIVE")

  # the tensor-core attention and its mma primitive (test_attn_tc.c): against plain
  # products and the cpu device, hd 64/128/40, GQA 1/4, bit-identical reruns; under two
  # seeds of the thread order. attn_tc_gpu is the same check on a real GPU (skipped
  # without one).
  add_executable(test_attn_tc ${CMAKE_CURRENT_LIST_DIR}/test_attn_tc.c)
  target_include_directories(test_attn_tc PRIVATE ${PROJECT_SOURCE_DIR}/tests)
  target_link_libraries(test_attn_tc PRIVATE pocrt pocrt_cuda)
  add_dependencies(test_attn_tc poc_cuemu)
  foreach(seed 1 2)
    add_test(NAME cuda_emul_attn_tc_seed${seed} COMMAND test_attn_tc)
    set_tests_properties(cuda_emul_attn_tc_seed${seed} PROPERTIES LABELS "cuda_emul" TIMEOUT 600
      ENVIRONMENT "${POC_CUEMU_ENV};POC_CUDA_EMU_SEED=${seed};OMP_WAIT_POLICY=PASSIVE")
  endforeach()
  add_test(NAME attn_tc_gpu COMMAND test_attn_tc)
  set_tests_properties(attn_tc_gpu PROPERTIES LABELS gpu TIMEOUT 300 SKIP_RETURN_CODE 77)

  # the embedding backward's bits under several thread schedules (seeds) and repeated
  # launches: equal to each other and to the cpu device's
  add_executable(test_emul_embed_det ${CMAKE_CURRENT_LIST_DIR}/test_emul_embed_det.c)
  target_include_directories(test_emul_embed_det PRIVATE ${PROJECT_SOURCE_DIR}/tests)
  target_link_libraries(test_emul_embed_det PRIVATE pocrt pocrt_cuda)
  add_dependencies(test_emul_embed_det poc_cuemu)
  foreach(seed 1 2 3)
    add_test(NAME cuda_emul_embed_det_seed${seed} COMMAND test_emul_embed_det)
    set_tests_properties(cuda_emul_embed_det_seed${seed} PROPERTIES LABELS "cuda_emul" TIMEOUT 120
      ENVIRONMENT "${POC_CUEMU_ENV};POC_CUDA_EMU_SEED=${seed};OMP_WAIT_POLICY=PASSIVE")
  endforeach()

  # the elementwise kernels' 128-bit paths, scalar fallbacks and tails against the cpu device
  add_executable(test_emul_vec ${CMAKE_CURRENT_LIST_DIR}/test_emul_vec.c)
  target_include_directories(test_emul_vec PRIVATE ${PROJECT_SOURCE_DIR}/tests)
  target_link_libraries(test_emul_vec PRIVATE pocrt pocrt_cuda)
  add_dependencies(test_emul_vec poc_cuemu)
  add_test(NAME cuda_emul_vec COMMAND test_emul_vec)
  set_tests_properties(cuda_emul_vec PROPERTIES LABELS "cuda_emul" TIMEOUT 300
    ENVIRONMENT "${POC_CUEMU_ENV};OMP_WAIT_POLICY=PASSIVE")

  # poc logp / poc generate with --backend cuda against --backend cpu on the bundled model
  add_test(NAME cuda_emul_cli
           COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_LIST_DIR}/cli_check.py
                   --poc ${POC_EXE} --root ${PROJECT_SOURCE_DIR})
  set_tests_properties(cuda_emul_cli PROPERTIES LABELS "cuda_emul" TIMEOUT 300
    ENVIRONMENT "${POC_CUEMU_ENV};OMP_WAIT_POLICY=PASSIVE")
  # DPO, CoPO (on-policy sample()), InsPO, RAO and LoRA DPO trained 20 steps on both
  # devices, and checkpoints crossing devices; about 4 minutes of one core, most of it the
  # emulation
  add_test(NAME cuda_emul_train
           COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_LIST_DIR}/train_check.py
                   --poc ${POC_EXE} --root ${PROJECT_SOURCE_DIR} --steps 20 --batch 4 --micro 2
                   --eval 16 dpo copo inspo rao lora_dpo)
  set_tests_properties(cuda_emul_train PROPERTIES LABELS "cuda_emul" TIMEOUT 900
    ENVIRONMENT "${POC_CUEMU_ENV};OMP_WAIT_POLICY=PASSIVE")
endif()

# What a GPU user meets (tests/cuda_emul/gpu_user_check.py): kernels built in by
# `poc build --arch` and run without NVRTC, the JIT kernel cache (reuse, corruption,
# concurrent runs, an unusable directory), and a kernel fault's one-line error naming the
# kernel and the model stage with checkpoints intact
if(TARGET pocrt_cuda)
  foreach(what arch cache fault)
    add_test(NAME cuda_emul_${what}
             COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_LIST_DIR}/gpu_user_check.py
                     --poc ${POC_EXE} --emu $<TARGET_FILE:poc_cuemu> --root ${PROJECT_SOURCE_DIR}
                     --scratch ${CMAKE_CURRENT_BINARY_DIR}/cuda_emul_${what}_scratch ${what})
    set_tests_properties(cuda_emul_${what} PROPERTIES LABELS "cuda_emul" TIMEOUT 900)
  endforeach()
endif()
