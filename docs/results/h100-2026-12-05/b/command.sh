# call 2, same machine
bash .device/llamacpp/build.sh .device/llamacpp >/dev/null 2>&1; AB_S=480 PENDING_PARTS=phases_ab bash scripts/gpu_check.sh run pending
