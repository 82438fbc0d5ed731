# Text at poc's edges against the tokenizers library: tokenizer.json decoding in C (byte-level
# BPE, SentencePiece with byte fallback, Metaspace) equal to Tokenizer.decode on random ids,
# poc generate --prompt/--chat encoding, OUT/eval/step-N.jsonl samples with text, and a
# tokenizer that does not fit config.json's vocab_size refused before any training.
add_test(NAME text_tokenizer
         COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_LIST_DIR}/text_check.py
                 --root ${PROJECT_SOURCE_DIR} --poc ${POC_EXE})
set_tests_properties(text_tokenizer PROPERTIES LABELS "tools;hf" TIMEOUT 600 SKIP_RETURN_CODE 77
                     ENVIRONMENT "OMP_NUM_THREADS=1;OMP_WAIT_POLICY=PASSIVE;HF_HUB_OFFLINE=1")
