"""Worlds: a model plus its prompts, task reward, diversity features and world-level eval metrics.

Every world object offers: ``train_prompts()``, ``eval_prompts(n)``, ``prompt_text(p)``,
``paraphrase`` (or None), ``encode(texts) -> Cond``, ``velocity(x, sigma, cond)``, ``reference()``
(context manager: the reference policy), ``trainable_parameters()``, ``decode(x) -> images in [0, 1]``,
``latent_shape``, ``reward(images, prompts) -> {'reward': (B,), other heads}``, ``features.embed``,
``eval_extras(images (P, S, ...), prompts) -> metrics`` and ``transformer`` (the trained module).
"""

AVAILABLE = ("shapes",)


def check_available(cfg) -> None:
    """Fail before any work if the configured world has no backend yet."""
    if cfg.model.world not in AVAILABLE:
        raise NotImplementedError(f"model.world={cfg.model.world!r}: this backend is not built yet (the real-model path "
                                  f"is an open issue); worlds that run: {list(AVAILABLE)}")


def make_world(cfg):
    """Build the world named by ``cfg.model.world``."""
    check_available(cfg)
    from .shapes.backend import ShapesWorld

    return ShapesWorld(cfg)
