# --log tensorboard|wandb: the files a training binary writes, read back with the tools'
# own readers (TensorBoard's event loader and accumulator; wandb-core's transaction-log
# reader through `wandb leet inspect`) and compared with metrics.jsonl, across resumes,
# crashes and a failing sink. Each skips (77) when its peer cannot be installed.
foreach(sink tensorboard wandb)
  add_test(NAME logging_${sink}
           COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_LIST_DIR}/test_logging.py ${sink}
                   $<TARGET_FILE:train_tt_dpo> ${CMAKE_CURRENT_BINARY_DIR}/logging_${sink}_scratch)
  set_tests_properties(logging_${sink} PROPERTIES LABELS "logging;train" TIMEOUT 300
                       SKIP_RETURN_CODE 77)
endforeach()
