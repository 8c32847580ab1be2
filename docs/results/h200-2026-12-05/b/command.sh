#!/usr/bin/env bash
# same wheel and machine as a/, the next call
PENDING_PARTS=sampler bash scripts/gpu_check.sh run pending   # then with FERRITE_CUDA_KERNEL_DEFINES=-DSAMPLE_FIXED_MASS=1 for the tests, bench_cuda_sampler.py with -DSAMPLE_FIXED_MASS=0 and =1
