"""Worlds: a model plus its prompts, task reward, diversity features and world-level eval metrics.

Every world object offers: ``train_prompts()``, ``eval_prompts(n)``, ``prompt_text(p)``,
``paraphrase`` (or None), ``encode(texts) -> Cond``, ``velocity(x, sigma, cond)``, ``reference()``
(context manager: the reference policy), ``trainable_parameters()``, ``decode(x) -> images in [0, 1]``,
``latent_shape``, ``reward(images, prompts) -> {'reward': (B,), other heads}``, ``features.embed``,
``eval_extras(images (P, S, ...), prompts) -> metrics`` and ``transformer`` (the trained module).
"""


def make_world(cfg):
    """Build the world named by ``cfg.model.world``."""
    if cfg.model.world == "shapes":
        from .shapes.backend import ShapesWorld

        return ShapesWorld(cfg)
    raise NotImplementedError(f"model.world={cfg.model.world!r}: the SD3 backend is not built yet (issue: real-model path)")
