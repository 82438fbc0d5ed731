# The NCCL stand-in (test-only; never installed): libnccl.so.2 with the entry points poc
# uses, carried out with MPI on the CUDA emulation's memory (nccl_standin.c says what it
# assumes and checks). Loaded through POC_NCCL_LIBRARY, where the real library would be.
if(TARGET pocrt_cuda AND TARGET poc_cuemu AND POC_HAVE_MPI AND MPIEXEC_EXECUTABLE)
  add_library(nccl_standin SHARED ${CMAKE_CURRENT_LIST_DIR}/nccl_standin.c)
  # libnccl.so.2 with SONAME libnccl.so.2, in a folder of its own
  set_target_properties(nccl_standin PROPERTIES OUTPUT_NAME nccl VERSION 2 SOVERSION 2
    LIBRARY_OUTPUT_DIRECTORY ${CMAKE_CURRENT_BINARY_DIR}/nccl_standin)
  target_include_directories(nccl_standin PRIVATE ${PROJECT_SOURCE_DIR}/runtime/cuda)
  target_include_directories(nccl_standin SYSTEM PRIVATE ${CUDAToolkit_INCLUDE_DIRS})
  target_link_libraries(nccl_standin PRIVATE MPI::MPI_C ${CMAKE_DL_LIBS})
  set(POC_NCCL_ENV "POC_CUDA_EMULATE=$<TARGET_FILE:poc_cuemu>"
                   "POC_NCCL_LIBRARY=$<TARGET_FILE:nccl_standin>")
  set(POC_NCCL_MPI ${MPIEXEC_EXECUTABLE} --oversubscribe)
  execute_process(COMMAND id -u OUTPUT_VARIABLE POC_UID OUTPUT_STRIP_TRAILING_WHITESPACE)
  if(POC_UID STREQUAL "0")
    list(APPEND POC_NCCL_MPI --allow-run-as-root)
  endif()

  # comm_nccl.h's collectives, a group, why NCCL is not used, and the stand-in's strictness
  # (a host buffer, ranks that disagree on the count), 3 ranks
  add_executable(test_nccl_standin ${CMAKE_CURRENT_LIST_DIR}/test_nccl_standin.c)
  target_include_directories(test_nccl_standin PRIVATE ${PROJECT_SOURCE_DIR}/tests)
  target_link_libraries(test_nccl_standin PRIVATE pocrt pocrt_cuda)
  add_dependencies(test_nccl_standin poc_cuemu nccl_standin)
  add_test(NAME nccl_standin COMMAND ${POC_NCCL_MPI} -np 3 $<TARGET_FILE:test_nccl_standin>)
  set_tests_properties(nccl_standin PROPERTIES LABELS "unit;dp;cuda_emul" TIMEOUT 120
    ENVIRONMENT "${POC_NCCL_ENV};OMP_NUM_THREADS=1;OMP_WAIT_POLICY=PASSIVE")

  # dpo on 2 ranks with --comm nccl against one process, and a library that does not load
  # (--comm nccl: an error; --comm auto: MPI, said once)
  add_test(NAME dp_nccl_standin
           COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_LIST_DIR}/check_nccl.py
                   --poc ${POC_EXE} --root ${PROJECT_SOURCE_DIR}
                   --scratch ${CMAKE_CURRENT_BINARY_DIR}/dp_nccl_scratch
                   --mpirun ${MPIEXEC_EXECUTABLE} --standin $<TARGET_FILE:nccl_standin>)
  set_tests_properties(dp_nccl_standin PROPERTIES LABELS "dp;cuda_emul" TIMEOUT 600
    ENVIRONMENT "POC_CUDA_EMULATE=$<TARGET_FILE:poc_cuemu>;OMP_NUM_THREADS=1;OMP_WAIT_POLICY=PASSIVE")
endif()
