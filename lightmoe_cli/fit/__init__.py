"""`lightmoe fit`: what a model needs and which plans fit a machine, from config.json alone (no tensor loaded).

    count.py    config.json -> parameters and bytes by kind (the model built on the meta device; safetensors headers
                when the weights are there)
    plans.py    pure: counts + memory + bandwidths -> the plans that fit and their decode bounds
    probe.py    short bandwidth probes of this machine (memory, disk)
    request.py  FitRequest (the options, declared once) and run_fit
"""
