"""Worlds: a model plus its prompts, task reward, diversity features and world-level eval metrics.

What every world offers is the ``World`` protocol of drift/worlds/types.py (checked for each world by
tests/test_world_contract.py): prompts, ``encode``, ``velocity``, ``reference()``, ``decode``, the
reward heads, the feature net and eval extras. What a world can do beyond that (e.g. paraphrase its
prompts) is decided from the config by ``CAPABILITIES`` (``offers`` / ``lacks``), so config validation can ask
without building the world or reading a file.

Worlds: ``shapes`` (drift/worlds/shapes: the embedded pixel-space model, CPU) and ``sd3`` (drift/worlds/sd3:
diffusers SD3-family pipelines, SD3.5-Medium by default; its settings are the sd3.* config section).
"""

import os

BACKENDS = {"shapes": ".shapes.backend.ShapesWorld", "sd3": ".sd3.backend.SD3World"}
"""World name -> its class (imported only when that world is built)."""
AVAILABLE = tuple(BACKENDS)


def _always(cfg) -> str | None:
    """Offered by every config of the world."""
    return None


def _sd3_paraphrase(cfg) -> str | None:
    """The SD3 world paraphrases iff sd3.paraphrases names a paraphrase file; else why not and how to fix it."""
    if cfg.sd3.paraphrases:
        return None
    ours = (", e.g. sd3.paraphrases=prompts/drift_sd3_v1.paraphrases.jsonl for the default sd3.prompts"
            if cfg.sd3.prompts == "prompts/drift_sd3_v1.txt" else "")
    return ("sd3.paraphrases='' names no paraphrase file; set it to a JSONL file of {\"prompt\": ..., \"paraphrases\": "
            "[...]} lines" + ours + " (docs/sd3.md)")


CAPABILITIES = {"shapes": {"paraphrase": _always}, "sd3": {"paraphrase": _sd3_paraphrase}}
"""World name -> {capability: cfg -> None if the configured world offers it, else why not and how to turn it on},
beyond the World protocol; decided from the config alone. 'paraphrase' = ``world.paraphrase`` is not None
(shapes: always, its templates and synonyms; sd3: iff sd3.paraphrases is set)."""


def lacks(cfg, capability: str) -> str | None:
    """None if the world of ``cfg`` offers ``capability`` with this config, else why not (naming the field)."""
    rule = CAPABILITIES.get(cfg.model.world, {}).get(capability)
    return f"model.world={cfg.model.world!r} has no {capability!r} at all" if rule is None else rule(cfg)


def offers(cfg, capability: str) -> bool:
    """Whether the world of ``cfg`` offers ``capability`` (a key of its CAPABILITIES entry) with this config."""
    return lacks(cfg, capability) is None


# Files a world reads from its local model folders: {config field: [relative paths]}.
REQUIRED_FILES = {
    "shapes": {"model.path": ["transformer/config.json", "transformer/diffusion_pytorch_model.safetensors",
                              "text_encoder/config.json", "text_encoder/model.safetensors"],
               "model.features": ["config.json", "model.safetensors"]},
}


EXTRAS = {"sd3": ("sd3", ("transformers", "open_clip", "dreamsim", "torchvision", "huggingface_hub"))}
"""World -> (the pip extra that installs its packages, the modules it imports). The core install (the
shapes world, sweeps, analysis) has none of them; a world's modules import them lazily."""


def check_extras(world: str) -> None:
    """ConfigError naming the missing modules and the extra to install, before anything is imported or written."""
    import importlib.util

    from ..config import ConfigError

    extra, modules = EXTRAS.get(world, ("", ()))
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"model.world={world!r} needs the [{extra}] extra, which is not installed (missing modules: "
                          f"{missing}); install it with: pip install -c constraints/ci.txt -e '.[{extra}]' "
                          f"(or pip install 'drift-bench[{extra}]')")


def check_available(cfg) -> None:
    """Fail before any work if the configured world has no backend yet, lacks its packages, or if a model
    file it reads is missing or unreadable (ConfigError naming the field, the value and the file)."""
    if cfg.model.world not in AVAILABLE:
        raise NotImplementedError(f"model.world={cfg.model.world!r}: this backend is not built yet (the real-model path "
                                  f"is an open issue); worlds that run: {list(AVAILABLE)}")
    from ..errors import ConfigError

    check_extras(cfg.model.world)

    for field, rels in REQUIRED_FILES.get(cfg.model.world, {}).items():
        folder = getattr(cfg.model, field.split(".", 1)[1])
        for rel in rels:
            path = os.path.join(folder, rel)
            try:
                with open(path, "rb") as f:
                    f.read(1)
            except OSError as e:
                raise ConfigError(f"{field}={folder!r}: cannot read {path} ({e.strerror or type(e).__name__}); "
                                  f"it must be a model folder holding {rels}") from None
    preflight = getattr(world_class(cfg.model.world), "preflight", None)
    if preflight is not None:  # world-specific cheap checks (files, prompt sets), before anything is written
        preflight(cfg)


def world_class(name: str):
    """The class of world ``name`` (its module is imported here)."""
    import importlib

    module, cls = BACKENDS[name].rsplit(".", 1)
    return getattr(importlib.import_module(module, __name__), cls)


def make_world(cfg):
    """Build the world named by ``cfg.model.world``."""
    check_available(cfg)
    return world_class(cfg.model.world)(cfg)
