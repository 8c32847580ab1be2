# calls 7 and 8, a fresh machine (another H100), the wheel of the final commit (two rows on by
# default, the stream modules in the prebuilt set), carried in .device/wheels with .device/tok.gguf
export PYTHONPATH=/tmp/site-gpu-check FERRITE_TOKENIZER_GGUF=$PWD/.device/tok.gguf
pip install --no-deps --quiet --target /tmp/site-gpu-check .device/wheels/*.whl
python3 -m pytest -q -p no:cacheprovider tests/test_cuda_model.py -k prebuilt   # 2 passed, 114 deselected in 17.22s
python3 -m pytest -q -p no:cacheprovider tests/test_cuda_matvec.py -k stream    # 6 passed, 122 deselected in 15.56s
python3 scripts/make_synthetic_model.py /tmp/s.gguf --tokenizer-from $FERRITE_TOKENIZER_GGUF   # 0.49 GB in 9.0 s
python3 benches/bench_first_load.py /tmp/s.gguf --cache /tmp/fl --evict --label "fresh machine"
# | fresh machine, evicted, readahead 1 | 0.01 | 0.23 | 1.51 | 1.76 | 192 | 0 (prebuilt serve) |
# call 8, same machine:
python3 -m pytest -q -ra -p no:cacheprovider --ignore=tests/test_notebooks.py --ignore=tests/test_readme.py -m "cuda and not model" tests
# 298 passed, 4 skipped (the server tests: no test extra there), 446 deselected in 114.04s
