# call 16, the same H100 lease, a fresh kernel cache (so the prebuilt set serves every module):
pip install -q --no-index --no-deps --target /tmp/site-v .device/wheels/*.whl
export PYTHONPATH=/tmp/site-v FERRITE_CACHE=/tmp/ferrite-cache-v FERRITE_TOKENIZER_GGUF=$PWD/.device/tok.gguf
python3 -m pytest -q -ra -p no:cacheprovider tests/test_cuda_model.py tests/test_cuda_row_ops.py tests/test_sampling.py -m "cuda and not model"
# 117 passed, 97 deselected in 64.41s (the prebuilt-kernels test among them)
