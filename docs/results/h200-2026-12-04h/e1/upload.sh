#!/usr/bin/env bash
# Session 16: one chunk of the real model onto the device (and, with the first, llama.cpp's build).
set -u
cd "$(dirname "$0")/.."
n=$1
mkdir -p /root/m
if [ "$n" = 00 ]; then
  rm -f /root/m/model.gguf
  # setsid: the device tool ends the call's process group when the command returns, which killed a plain background job mid-extraction (session 20)
  [ -f /root/llamacpp.done ] || [ -d /root/llamacpp ] || setsid -f nice -n 19 bash .device/llamacpp/build.sh .device/llamacpp > /root/llama_build.txt 2>&1 < /dev/null
fi
cat .device/chunks/c$n >> /root/m/model.gguf && ls -l /root/m/model.gguf | awk '{print $5}'
