# Data parallelism over MPI: 2 and 3 ranks against one process on the examples that
# cover batch reductions (copo), sampled anchors (copo), pick (sgdpo) and the separable
# path (dpo, stapo, rao), LoRA adapters (lora_dpo) and a reward model (reward), with ZeRO-1
# (the default) and, on dpo and sgdpo, without it (--zero 0) and without overlap; ZeRO's
# sharded checkpoints resumed 1 → 2 → 3 → 1 processes, refused when damaged, and intact
# after kill -9 of a rank at random moments. Needs poc built with MPI and an mpirun; about two minutes of
# one core.
if(POC_HAVE_MPI AND MPIEXEC_EXECUTABLE)
  add_test(NAME dp_mpi
           COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_LIST_DIR}/check_dp.py
                   --poc ${POC_EXE} --root ${PROJECT_SOURCE_DIR}
                   --scratch ${CMAKE_CURRENT_BINARY_DIR}/dp_scratch
                   --mpirun ${MPIEXEC_EXECUTABLE} --zero-off dpo,sgdpo
                   dpo copo sgdpo stapo rao lora_dpo reward)
  set_tests_properties(dp_mpi PROPERTIES LABELS "dp;train" TIMEOUT 900
                       ENVIRONMENT "OMP_NUM_THREADS=1;OMP_WAIT_POLICY=PASSIVE")
endif()

# The CUDA device under the emulation of tests/cuda_emul: the gradient goes through host
# memory and MPI (no NCCL yet), summed in float in another order than one process's
# in-place sum, so a weight may differ by a float32 spacing; 2 ranks against one process
# on dpo, 3 steps.
if(POC_HAVE_MPI AND MPIEXEC_EXECUTABLE AND TARGET pocrt_cuda AND TARGET poc_cuemu)
  add_test(NAME dp_mpi_cuda_emul
           COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_LIST_DIR}/check_dp.py
                   --poc ${POC_EXE} --root ${PROJECT_SOURCE_DIR}
                   --scratch ${CMAKE_CURRENT_BINARY_DIR}/dp_cuda_scratch
                   --mpirun ${MPIEXEC_EXECUTABLE} --backend cuda --subset 64 --steps 3
                   --ranks 2 --set train.batch=4 --set train.micro_batch=1 --weight-ulps 1 --no-faults
                   dpo)
  set_tests_properties(dp_mpi_cuda_emul PROPERTIES LABELS "dp;cuda_emul" TIMEOUT 600
    ENVIRONMENT "POC_CUDA_EMULATE=$<TARGET_FILE:poc_cuemu>;OMP_NUM_THREADS=1;OMP_WAIT_POLICY=PASSIVE")
endif()

# The collectives on device buffers (runtime/comm_dev.c), 3 ranks: MPI on host buffers
# (cpu, cpu64) and, under the CUDA emulation, staged through host memory (cuda, f32 and
# bf16), each into another buffer and in place.
if(POC_HAVE_MPI AND MPIEXEC_EXECUTABLE)
  add_executable(test_comm_dev ${CMAKE_CURRENT_LIST_DIR}/test_comm_dev.c)
  target_include_directories(test_comm_dev PRIVATE ${PROJECT_SOURCE_DIR}/tests)
  target_link_libraries(test_comm_dev PRIVATE pocrt)
  set(comm_dev_devices cpu cpu64)
  set(comm_dev_env "OMP_NUM_THREADS=1;OMP_WAIT_POLICY=PASSIVE;OMPI_ALLOW_RUN_AS_ROOT=1;OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1")
  if(TARGET poc_cuemu)
    add_dependencies(test_comm_dev poc_cuemu)
    list(APPEND comm_dev_devices cuda)
    string(APPEND comm_dev_env ";POC_CUDA_EMULATE=$<TARGET_FILE:poc_cuemu>")
  endif()
  add_test(NAME dp_comm_dev
           COMMAND ${MPIEXEC_EXECUTABLE} --oversubscribe -x OMP_NUM_THREADS -x POC_CUDA_EMULATE
                   ${MPIEXEC_NUMPROC_FLAG} 3 $<TARGET_FILE:test_comm_dev> ${comm_dev_devices})
  set_tests_properties(dp_comm_dev PROPERTIES LABELS "dp;unit" TIMEOUT 120
                       ENVIRONMENT "${comm_dev_env}")
endif()
