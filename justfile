# lightmoe tasks. `pip install rust-just` gives `just` on a fresh machine.
set shell := ["bash", "-euo", "pipefail", "-c"]

venv := ".venv"
py := venv + "/bin/python"
export HF_HUB_OFFLINE := "1"
export HF_DATASETS_OFFLINE := "1"
export TOKENIZERS_PARALLELISM := "false"

# Show the recipes.
default:
    @just --list

# venv + CPU torch (a wheel on local disk here) + lightmoe in editable mode + the corpus's Debian packages.
setup:
    #!/usr/bin/env bash
    set -euo pipefail
    if [ ! -x {{py}} ]; then python3 -m venv {{venv}}; fi
    stamp={{venv}}/.lightmoe-setup
    want=$(sha256sum pyproject.toml | cut -c1-16)
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        {{py}} -m pip install -q --upgrade pip
        {{py}} -m pip install -q "torch==2.13.0"
        {{py}} -m pip install -q -e ".[dev]"
        echo "$want" > "$stamp"
    fi
    just corpus-deps

# Debian packages the demo corpus is built from (dictionary, bibles, Python docs).
corpus-deps:
    #!/usr/bin/env bash
    set -euo pipefail
    pkgs="dict-gcide sword-text-web sword-text-sparv libsword-utils python3.11-doc"
    missing=$(for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done)
    if [ -n "$missing" ]; then
        sudo_=""; [ "$(id -u)" = 0 ] || sudo_="sudo"
        $sudo_ apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq $missing >/dev/null
    fi

# Build the multi-domain demo corpus into data/corpus (skipped when it is already there).
corpus: setup
    @[ -f data/corpus/manifest.json ] || {{venv}}/bin/lightmoe demo corpus --out data/corpus

# Retrain the demo model from its recipe (about 2 hours on 2 cores), then measure it and write its card.
train-demo: corpus
    {{venv}}/bin/lightmoe demo train
    {{venv}}/bin/lightmoe demo card

# The main job on the embedded default model: adapters, the model, its routing profile, a bundle at 50% memory,
# generations from it, and what it is for: full vs prune vs task-aware on held-out text of several domains.
demo: corpus
    {{venv}}/bin/lightmoe models
    {{venv}}/bin/lightmoe demo show
    {{venv}}/bin/lightmoe profile
    {{venv}}/bin/lightmoe build-bundle --budget 0.5
    {{venv}}/bin/lightmoe run --prompt $'12 + 7 = 19\n45 - 3 = ' --prompt $'def read_lines(path):\n' --max-new-tokens 24
    {{venv}}/bin/lightmoe demo compare

# Fast tests (slow and gpu excluded); the corpus is built first, some tests read it.
test: corpus
    {{py}} -m pytest -q

# All tests, slow ones included.
test-all: corpus
    {{py}} -m pytest -q -m "not gpu"

# ruff over the package, the tests and the benchmarks.
lint: setup
    {{venv}}/bin/ruff check lightmoe_cli tests benchmarks

# Benchmarks on the demo model (print a table, write JSON under benchmarks/results). Run on a quiet machine:
# configurations interleaved, 5 repeats, each ratio beside its bound; a noisy run is refused (--allow-noisy marks it).
bench: setup
    {{py}} benchmarks/bench_profile.py
    {{py}} benchmarks/bench_runtime.py

# The runtime benchmark on a random-weight OLMoE-shaped model with 2 layers (~1.05B parameters, ~4 GB fp32).
bench-large: setup
    {{py}} benchmarks/bench_runtime.py --random-olmoe 2 --new-tokens 16

# Prune bundles at 25/50/75% of the demo model and of the 1.05B random OLMoE shape (about 8 minutes on 2 cores; JSON
# in benchmarks/results/fit-rss.json; the bundles are deleted afterwards):
# fit's predicted peak RSS of a bundle vs the measured peak RSS of `lightmoe run` (docs/fit.md).
fit-rss: setup
    {{py}} benchmarks/fit_rss.py --model demo --model olmoe-2L --budgets 0.25,0.5,0.75

# `lightmoe tune` against the exhaustive grid at 25/50/75% (docs/tune.md): wall ratio and the pick, ~27 min
bench-tune: corpus
    {{py}} benchmarks/bench_tune.py

# Load test of `lightmoe serve` (docs/serving.md): the openai client, 16 clients, 200 interleaved held-out
# documents; full, prune, task-aware FIFO+jump, task scheduling and the oracle at 25% and 50%; task detection
# accuracy, the quality meter against real damage, one request alone vs `run` (about 15 minutes on 2 cores).
bench-serve: corpus
    {{py}} benchmarks/bench_serve.py --budgets 0.25,0.5 --requests 200 --clients 16 --rate 0 --task-groups 4

# Ray Serve for `lightmoe serve --replicas K` (the optional extra), when it is not installed yet.
fleet-deps: setup
    @{{py}} -c "import ray.serve" 2>/dev/null || {{py}} -m pip install -q -e ".[ray]"

# `lightmoe serve --replicas` (docs/fleet.md): bench_serve's load against 2 replicas with affinity and with
# round-robin routing, 1 replica, and one server with FIFO + jump, on the demo at 50%; the simulator's
# calibration; a replica killed under load (about 12 minutes on 2 cores; JSON in benchmarks/results/fleet.json).
bench-fleet: corpus fleet-deps
    {{py}} benchmarks/bench_fleet.py --requests 200 --clients 16 --rate 12

# The fleet simulation for K = 1..64 replicas and 8..64 tasks from bench-fleet's measurements, with its 1- and
# 2-replica points beside the measured ones (seconds; JSON + PNG in benchmarks/results/sim_fleet.*): checked
# against the quiet load run, with that run's own quiet calibration.
sim-fleet: setup
    {{py}} benchmarks/sim_fleet.py --fleet benchmarks/results/fleet-quiet.json

# docs/fleet.md, "Repeats at 12 requests/s" (about 25 s): the fleet model checked against six repeats of the
# load at 12 requests/s offered, each with its own calibration, from two sessions: fleet-records-3.json and
# fleet-records-3b.json (each: bench_fleet.py --phases load,calibrate --repeats 3 --only "1 replica x1 thread
# 50%,2 replicas round-robin 50%,2 replicas affinity 50%" --out FILE).
sim-fleet-repeats: setup
    {{py}} benchmarks/sim_fleet.py --fleet benchmarks/results/fleet-records-3.json --records benchmarks/results/fleet-records-3.json --more-repeats benchmarks/results/fleet-records-3b.json --no-sweep --out benchmarks/results/sim_fleet-records-3.json

# docs/fleet.md, "Six repeats at saturation" and the README's fleet table: 1 replica and 2 replicas (round-robin,
# affinity) with the clients sending at will, 3 repeats each followed by its own calibration, with every fleet
# load's CPU timeline (about 11 minutes on 2 cores; JSON in benchmarks/results/fleet-records-rate0-b.json).
bench-fleet-saturated: corpus fleet-deps
    {{py}} benchmarks/bench_fleet.py --phases load,calibrate --repeats 3 --rate 0 --only "1 replica x1 thread 50%,2 replicas round-robin 50%,2 replicas affinity 50%" --out fleet-records-rate0-b.json

# docs/fleet.md, "Repeats at 12 requests/s": one engine fed 4 tasks against 8, timing every step, prefill and set
# move (about 4 minutes; JSON in benchmarks/results/task-locality.json).
bench-task-locality: corpus
    {{py}} benchmarks/bench_task_locality.py --repeats 5

# docs/fleet.md, "Repeats at 12 requests/s": every fleet replica's engine steps, prefills and set moves timed
# where the engine calls them (1 replica, round-robin and affinity, 3 runs each; about 9 minutes), then their medians by
# rows, with the other engine idle and computing (JSON in benchmarks/results/fleet-step-logs.json).
fleet-steps: corpus fleet-deps
    #!/usr/bin/env bash
    set -euo pipefail
    logs=runs/fleet-steps-$(date +%Y%m%d-%H%M%S)
    {{py}} benchmarks/bench_fleet.py --phases load --rate 12 --repeats 3 --only "1 replica x1 thread 50%,2 replicas round-robin 50%,2 replicas affinity 50%" --step-logs "$logs" --out fleet-steps.json
    {{py}} benchmarks/step_logs.py "$logs"

# docs/fleet.md, "Each load with its own engine costs": the fleet model against fleet-steps' loads, each with the
# costs its replicas' step logs timed (about 20 s; JSON in benchmarks/results/sim_fleet-steps.json).
sim-fleet-in-situ: setup
    {{py}} benchmarks/sim_fleet.py --fleet benchmarks/results/fleet-steps.json --records benchmarks/results/fleet-steps.json --calibrations benchmarks/results/fleet-records-3b.json --in-situ --no-sweep --out benchmarks/results/sim_fleet-steps.json

# The fleet model checked against the six saturated repeats of two sessions (about 25 s): fleet-records-rate0.json
# (the same command, --out fleet-records-rate0.json) and bench-fleet-saturated's.
sim-fleet-saturated: setup
    {{py}} benchmarks/sim_fleet.py --fleet benchmarks/results/fleet-records-rate0.json --records benchmarks/results/fleet-records-rate0.json --more-repeats benchmarks/results/fleet-records-rate0-b.json --no-sweep --out benchmarks/results/sim_fleet-records-rate0.json

# Activation budgets on the same 1.05B model (docs/activation-budgets.md): every rule vs the full top-k, one
# request and 8 together, each ratio beside its bound (about 16 minutes on 2 cores).
bench-activation: setup
    {{py}} benchmarks/bench_activation.py --random-olmoe 2 --rules topk,lexi,naee,alloc,alloc-t --batch 8 --tag=-all

# Smoke test of the harness on the demo model (about 2 minutes; tiny probe, one repeat, marked noisy, JSON in data/).
bench-smoke: setup
    {{py}} benchmarks/bench_runtime.py --budgets 0.5 --policies prune,lightmoe --new-tokens 4 --profile-tokens 256 --repeats 1 --probe-mib 64 --allow-noisy --results-dir data/bench/smoke

# The comparison of the README: every policy at three budgets, MC items and held-out text, plus task-shift streams.
# (User runs write to runs/; the shipped reports under artifacts/eval/ are rebuilt only by recipes like this one.)
eval-demo: corpus
    {{venv}}/bin/lightmoe eval --budgets 0.25,0.5,0.75 --limit 48 --out artifacts/eval/demo-moe

# Train the second, upcycled demo model (about 1.5 hours on 2 cores) and write its card.
train-upcycled: corpus
    {{venv}}/bin/lightmoe demo train --recipe recipes/training/demo-moe-upcycled.yaml
    {{venv}}/bin/lightmoe demo card --recipe recipes/training/demo-moe-upcycled.yaml

# Redirect vs re-route vs drop on both demo models, and their expert-similarity histograms.
bench-redirect: corpus
    {{py}} benchmarks/bench_redirect.py --model demo --budgets 0.25,0.5
    {{py}} benchmarks/bench_redirect.py --model demo-upcycled --budgets 0.25,0.5
    {{venv}}/bin/lightmoe demo similarity --model demo --model demo-upcycled --out artifacts/eval/expert-similarity.png

# Expert prediction (MoE-Beyond) and cache replay on the demo model: traces, predictor + baselines, simulate.
predict-demo: corpus
    {{venv}}/bin/lightmoe profile --save-router-inputs --max-tokens 4096 --out runs/profiles/demo-moe-train-traces
    {{venv}}/bin/lightmoe profile --tasks recipes/calibration/demo-heldout.yaml --save-router-inputs --out runs/profiles/demo-moe-heldout
    {{venv}}/bin/lightmoe predict train --profile runs/profiles/demo-moe-train-traces --heldout runs/profiles/demo-moe-heldout --out artifacts/eval/demo-moe-predictor
    {{venv}}/bin/lightmoe simulate --heldout runs/profiles/demo-moe-heldout --predictor artifacts/eval/demo-moe-predictor --cache 0.05,0.1,0.25,0.5 --out artifacts/eval/demo-moe-cache

# Non-blocking swapping vs the other caches at 25% and 50% memory, one eval of all (run predict-demo first).
eval-swap: corpus
    #!/usr/bin/env bash
    set -euo pipefail
    out=runs/bundles-swap; args=()
    for b in 0.25 0.5; do
        for p in prune lru swap lightmoe; do
            {{venv}}/bin/lightmoe build-bundle --policy $p --budget $b --out $out/$p-$b >/dev/null
            args+=(--bundle $out/$p-$b)
        done
        {{venv}}/bin/lightmoe build-bundle --policy predict --predictor artifacts/eval/demo-moe-predictor --budget $b --out $out/predict-$b >/dev/null
        args+=(--bundle $out/predict-$b)
    done
    {{venv}}/bin/lightmoe build-bundle --policy full --out $out/full >/dev/null
    {{venv}}/bin/lightmoe eval --bundle $out/full "${args[@]}" --tasks demo,demo_ppl --limit 48 --out artifacts/eval/demo-moe-swap

# Pinned-core caches (docs/caches.md): held-out NLL on task-shift streams at 25/50% with paired intervals and the
# simulator-vs-runtime hit rates (demo model), then decode at a throttled 1 GB/s on the 1.05B OLMoE-shaped model.
bench-caches: corpus
    {{py}} benchmarks/bench_caches.py quality --threads 1 --budgets 0.25,0.5 --blocks 1,8,30 --requests 48
    {{py}} benchmarks/bench_caches.py prefetch --threads 1 --budget 0.5 --blocks 8,30
    {{py}} benchmarks/bench_caches.py decode-quality
    {{py}} benchmarks/bench_caches.py decode --random-olmoe 2 --budgets 0.25,0.5 --io-bandwidth 1e9 --new-tokens 16

# The pinned-core caches scored by lm-eval (batched forwards, held-out NLL, paired vs prune) at 25% and 50%.
eval-caches: corpus
    #!/usr/bin/env bash
    set -euo pipefail
    out=runs/bundles-caches; args=()
    for b in 0.25 0.5; do
        {{venv}}/bin/lightmoe build-bundle --policy prune --budget $b --out $out/prune-$b --force >/dev/null
        {{venv}}/bin/lightmoe build-bundle --policy swap --budget $b --out $out/swap-$b --force >/dev/null
        {{venv}}/bin/lightmoe build-bundle --policy swap --pinned 0.75 --admission demand --double-buffer --budget $b --out $out/pinned-$b --force >/dev/null
        {{venv}}/bin/lightmoe build-bundle --policy swap --pinned 0.75 --admission demand --budget $b --out $out/pinned-nospare-$b --force >/dev/null
        {{venv}}/bin/lightmoe build-bundle --policy swap --pinned 0.75 --admission demand --read-budget 0.125 --budget $b --out $out/pinned-nospare-rb-$b --force >/dev/null
        {{venv}}/bin/lightmoe build-bundle --policy swap --pinned 0.75 --admission demand --read-budget 0.0625 --budget $b --out $out/pinned-nospare-rb16-$b --force >/dev/null
        args+=(--bundle $out/prune-$b --bundle $out/swap-$b --bundle $out/pinned-$b --bundle $out/pinned-nospare-$b --bundle $out/pinned-nospare-rb-$b --bundle $out/pinned-nospare-rb16-$b)
    done
    {{venv}}/bin/lightmoe eval "${args[@]}" --tasks demo_ppl --limit 48 --no-task-shift --out artifacts/eval/demo-moe-caches

# Expert replacing vs prune, REAP, merging, naive replacing and prune+LoRA at 30%/50%, and its ablations.
eval-replace: corpus
    #!/usr/bin/env bash
    set -euo pipefail
    out=runs/bundles-replace; args=()
    build() { name=$1; shift; {{venv}}/bin/lightmoe build-bundle "$@" --out $out/$name >/dev/null; args+=(--bundle $out/$name); }
    build full --policy full
    for c in 0.3 0.5; do
        b=$(python3 -c "print(round(1 - $c, 2))")
        build replace-$c --policy replace --compression $c --rank 8
        build naive-$c --policy replace --compression $c --rank 0
        build merge-$c --policy merge --budget $b
        build prune-$c --policy prune --budget $b
        build prune-reap-$c --policy prune --budget $b --ranking reap
    done
    # prune + LoRA with the trainable parameters of replace at rank 8 (42 and 69 replaced experts; 89 and 64 kept)
    build prune-lora-0.3 --policy prune-lora --budget 0.7 --rank 4
    build prune-lora-0.5 --policy prune-lora --budget 0.5 --rank 9
    # ablations at 30%: no annealing, SVD init without training, rank 4 and 16
    build replace-0.3-no-anneal --policy replace --compression 0.3 --rank 8 --anneal 0
    build replace-0.3-svd-only --policy replace --compression 0.3 --rank 8 --recover-steps 0
    build replace-0.3-rank4 --policy replace --compression 0.3 --rank 4
    build replace-0.3-rank16 --policy replace --compression 0.3 --rank 16
    {{venv}}/bin/lightmoe eval "${args[@]}" --tasks demo,demo_ppl --limit 48 --no-task-shift --out artifacts/eval/demo-moe-replace

# llama.cpp's GGUF converter (into .cache/llama.cpp) and llama-cpp-python (compiled: minutes) for --format gguf.
llama-cpp: setup
    #!/usr/bin/env bash
    set -euo pipefail
    version=0.3.36
    if [ ! -f .cache/llama.cpp/convert_hf_to_gguf.py ]; then
        mkdir -p .cache/dl
        {{py}} -m pip download -q --no-deps --no-binary :all: -d .cache/dl "llama-cpp-python==$version"
        src=llama_cpp_python-$version/vendor/llama.cpp
        tar xzf .cache/dl/llama_cpp_python-$version.tar.gz -C .cache $src/convert_hf_to_gguf.py $src/conversion $src/gguf-py
        rm -rf .cache/llama.cpp && mv .cache/$src .cache/llama.cpp && rm -rf .cache/llama_cpp_python-$version
    fi
    {{py}} -m pip install -q -e ".[gguf]"

# Expert replacing's --select similarity (near-duplicates replaced first) vs mass, on both demo models at 50%.
eval-replace-select: corpus
    #!/usr/bin/env bash
    set -euo pipefail
    for m in demo demo-upcycled; do
        out=runs/bundles-replace-select/$m
        {{venv}}/bin/lightmoe build-bundle --model $m --policy prune --budget 0.5 --out $out/prune-0.5 >/dev/null
        {{venv}}/bin/lightmoe build-bundle --model $m --policy replace --compression 0.5 --rank 8 --out $out/replace-0.5 >/dev/null
        {{venv}}/bin/lightmoe build-bundle --model $m --policy replace --compression 0.5 --rank 8 --select similarity --out $out/replace-sim-0.5 >/dev/null
        {{venv}}/bin/lightmoe eval --bundle $out/prune-0.5 --bundle $out/replace-0.5 --bundle $out/replace-sim-0.5 --tasks demo,demo_ppl --limit 48 --no-task-shift --out runs/eval-replace-select-$m
    done
