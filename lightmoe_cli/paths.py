"""Default locations and names, spelled once: the demo model, recipes, artifact folders, the model slug.

Why one module: commands, the evaluation and the demo all need "where does the profile of model M live";
spelling that in each of them let the defaults drift apart (and made the evaluation import the CLI).
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = REPO_ROOT / "artifacts" / "demo-moe"
UPCYCLED_MODEL = REPO_ROOT / "artifacts" / "demo-moe-upcycled"
# short names accepted wherever a model is asked for: the trained-from-scratch and the upcycled demo model
DEMO_MODELS = {"demo": DEFAULT_MODEL, "demo-upcycled": UPCYCLED_MODEL}
DEFAULT_CALIBRATION = REPO_ROOT / "recipes" / "calibration" / "demo.yaml"
DEFAULT_TRAIN_RECIPE = REPO_ROOT / "recipes" / "training" / "demo-moe.yaml"
PROFILES_DIR = REPO_ROOT / "artifacts" / "profiles"
BUNDLES_DIR = REPO_ROOT / "artifacts" / "bundles"
EVAL_DIR = REPO_ROOT / "artifacts" / "eval"  # the shipped reports, rebuilt only by their just recipes
RUNS_DIR = REPO_ROOT / "runs"  # default outputs of user runs (git-ignored): eval, cache replay, predictors
CORPUS_DIR = REPO_ROOT / "data" / "corpus"
ITEMS_DIR = REPO_ROOT / "data" / "tasks" / "items"
DEFAULT_BUNDLE = BUNDLES_DIR / "demo-moe-task-aware-50"


def repo_relative(path: str | Path) -> str:
    """`path` relative to the repository when it lies inside it (for cards and manifests), else absolute."""
    p = Path(path).resolve()
    return str(p.relative_to(REPO_ROOT)) if p.is_relative_to(REPO_ROOT) else str(p)


def model_slug(name: str | Path) -> str:
    """A folder name for a model: a local folder's own name, or a hub id with '/' -> '--'."""
    text = str(name)
    return Path(text).name if Path(text).exists() else text.replace("/", "--")


def default_profile(model_name: str | Path) -> Path:
    return PROFILES_DIR / model_slug(model_name)


def default_bundle(model_name: str | Path, policy: str, tag: str) -> Path:
    return BUNDLES_DIR / f"{model_slug(model_name)}-{policy}-{tag}"


def default_eval_dir(model_name: str | Path | None) -> Path:
    return RUNS_DIR / "eval" / (model_slug(model_name) if model_name else "bundles")


def default_cache_dir(model_name: str | Path) -> Path:
    """`lightmoe simulate`'s default output."""
    return RUNS_DIR / "cache" / model_slug(model_name)


def default_predictor(profile: str | Path) -> Path:
    """`lightmoe predict train`'s default output: named after its training profile, never inside it."""
    return RUNS_DIR / "predictors" / Path(profile).resolve().name


def offline() -> None:
    """No model hub on these machines: a model argument is a local folder or an already-cached hub id."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
