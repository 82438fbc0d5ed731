# Data parallelism over MPI: 2 and 3 ranks against one process on the examples that
# cover batch reductions (copo), sampled anchors (copo), pick (sgdpo) and the separable
# path (dpo, stapo, rao). Needs poc built with MPI and an mpirun; about two minutes of
# one core.
if(POC_HAVE_MPI AND MPIEXEC_EXECUTABLE)
  add_test(NAME dp_mpi
           COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_LIST_DIR}/check_dp.py
                   --poc ${POC_EXE} --root ${PROJECT_SOURCE_DIR}
                   --scratch ${CMAKE_CURRENT_BINARY_DIR}/dp_scratch
                   --mpirun ${MPIEXEC_EXECUTABLE} dpo copo sgdpo stapo rao)
  set_tests_properties(dp_mpi PROPERTIES LABELS "dp;train" TIMEOUT 900
                       ENVIRONMENT "OMP_NUM_THREADS=1;OMP_WAIT_POLICY=PASSIVE")
endif()
