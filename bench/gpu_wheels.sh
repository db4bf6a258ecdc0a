#!/usr/bin/env bash
# Prepare .whl/: the wheels the accelerator image lacks (it has torch, torchvision, timm, typer, rich,
# safetensors, numpy, scipy, matplotlib, scikit-learn, tqdm, PyYAML; it has no network). Run here, with
# network; bench/gpu_check.sh installs them there with --no-index. Pure-Python wheels only.
set -euo pipefail
cd "$(dirname "$0")/.."
out=.whl
rm -rf "$out" && mkdir -p "$out"
py=${PYTHON:-python3}
plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any)
$py -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${plat[@]}" \
    -d "$out" omegaconf lpips torchattacks
# omegaconf 2.3 needs antlr4-python3-runtime 4.9.*, published as an sdist only: build its (pure) wheel here.
antlr=$(unzip -p "$out"/omegaconf-*.whl '*/METADATA' | sed -n 's/^Requires-Dist: *\(antlr4-python3-runtime[^;]*\).*/\1/p' | tr -d ' ')
if [ -n "$antlr" ]; then
    $py -m pip wheel --quiet --no-deps -w "$out" "$antlr"
fi
ls -1 "$out"
