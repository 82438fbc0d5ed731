# poc bench: the fused and unfused builds of examples/dpo.po side by side on the tiny model
# (both variants measured, the split adds up, the losses agree, errors name their cause),
# and the CPU-runnable pieces of bench/gpu (the PyTorch DPO step against TRL's loss).
add_test(NAME bench_poc
         COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_LIST_DIR}/test_bench.py
                 $<TARGET_FILE:poc> ${CMAKE_CURRENT_BINARY_DIR}/bench_scratch
         WORKING_DIRECTORY ${PROJECT_SOURCE_DIR})
set_tests_properties(bench_poc PROPERTIES LABELS bench TIMEOUT 180
                     ENVIRONMENT "OMP_NUM_THREADS=1;OMP_WAIT_POLICY=PASSIVE")

# bench/gpu's pipeline on the CPU: a tiny model through poc bench, the hand-written PyTorch
# DPO step and TRL's DPOTrainer, which must all report the same losses step for step.
add_test(NAME bench_gpu_pieces
         COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_LIST_DIR}/test_gpu_pieces.py
                 $<TARGET_FILE:poc> ${CMAKE_CURRENT_BINARY_DIR}/gpu_pieces_scratch
         WORKING_DIRECTORY ${PROJECT_SOURCE_DIR})
set_tests_properties(bench_gpu_pieces PROPERTIES LABELS bench TIMEOUT 300 SKIP_RETURN_CODE 77
                     ENVIRONMENT "OMP_NUM_THREADS=1;OMP_WAIT_POLICY=PASSIVE")

# poc bench --backend cuda on the CUDA emulation (tests/cuda_emul): the GEMM peak through
# the device's cuBLAS path, --profile's synchronised stages and the device allocator's peak.
if(TARGET pocrt_cuda)
  add_test(NAME bench_cuda_emul
           COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_LIST_DIR}/test_cuda_emul.py
                   $<TARGET_FILE:poc> ${CMAKE_CURRENT_BINARY_DIR}/cuda_emul_scratch
           WORKING_DIRECTORY ${PROJECT_SOURCE_DIR})
  set_tests_properties(bench_cuda_emul PROPERTIES LABELS "bench;cuda_emul" TIMEOUT 240
    ENVIRONMENT "POC_CUDA_EMULATE=$<TARGET_FILE:poc_cuemu>;OMP_NUM_THREADS=1;OMP_WAIT_POLICY=PASSIVE")
endif()
