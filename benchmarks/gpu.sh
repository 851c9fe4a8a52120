#!/usr/bin/env bash
# Every GPU figure of benchmarks/throughput.py in one run on one node, a few minutes on one modern GPU:
#   - enstune's loop against a bare loop for resnet50, swin_tiny and CLIP ViT-B/32 (goal: ratio >= 0.97);
#   - the device-resident CIFAR path at 224 against the reference pipeline (goal: >= 3x);
#   - JPEG decoding on the GPU against PIL in DataLoader workers;
#   - with two GPUs or more, a DDP member on two GPUs against one (goal: >= 1.8x).
# Backbones are built with random weights, so nothing is downloaded.
#   usage: benchmarks/gpu.sh            (PYTHON=... to choose the interpreter; default .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
bench() { echo "+ throughput.py $*"; "$py" benchmarks/throughput.py "$@"; }

"$py" -c 'import sys, torch
if not torch.cuda.is_available():
    sys.exit("no GPU visible: benchmarks/gpu.sh measures GPU figures (throughput.py alone runs on a CPU)")
print("torch", torch.__version__, "on", torch.cuda.device_count(), "x", torch.cuda.get_device_name(0))'
bench --device cuda:0 --section loop --batch 128 --steps 30 --images 2048 --workers 8
bench --device cuda:0 --section pipeline --batch 256 --steps 100 --warmup 20 --cifar-images 8192
bench --device cuda:0 --section decode --workers 8 --batch 256 --images 4096
if [ "$("$py" -c 'import torch; print(torch.cuda.device_count())')" -ge 2 ]; then
  bench --section ddp --ddp-devices cuda:0,cuda:1 --model resnet50.tv_in1k --batch 256 --steps 50
else
  echo "one GPU: the DDP figure needs two"
fi
