# poc bench: the fused and unfused builds of examples/dpo.po side by side on the tiny model
# (both variants measured, the split adds up, the losses agree, errors name their cause),
# and the CPU-runnable pieces of bench/gpu (the PyTorch DPO step against TRL's loss).
add_test(NAME bench_poc
         COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_LIST_DIR}/test_bench.py
                 $<TARGET_FILE:poc> ${CMAKE_CURRENT_BINARY_DIR}/bench_scratch
         WORKING_DIRECTORY ${PROJECT_SOURCE_DIR})
set_tests_properties(bench_poc PROPERTIES LABELS bench TIMEOUT 180
                     ENVIRONMENT "OMP_NUM_THREADS=1;OMP_WAIT_POLICY=PASSIVE")
