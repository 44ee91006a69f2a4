"""Former home of the runnable families; kept so that ``memprune.models.<module>`` imports keep working.

The code lives in :mod:`memprune.families` (one package per family). Each old module name is an alias of its
new module (the same module object, not a copy).
"""

import importlib
import sys

_MOVED = {
    "base": "memprune.families.base",
    "state_dict": "memprune.families.state_dict",
    "loading": "memprune.families.loading",
    "var": "memprune.families.var.model",
    "var_blocks": "memprune.families.var.blocks",
    "var_checkpoint": "memprune.families.var.checkpoint",
    "var_generate": "memprune.families.var.generate",
    "var_transformer": "memprune.families.var.transformer",
    "var_vae_blocks": "memprune.families.var.vae_blocks",
    "vqvae": "memprune.families.var.vqvae",
    "rar": "memprune.families.rar.model",
    "rar_sampling": "memprune.families.rar.sampling",
    "rar_transformer": "memprune.families.rar.transformer",
    "maskgit_vqgan": "memprune.families.rar.maskgit_vqgan",
    "llamagen": "memprune.families.llamagen.model",
    "llamagen_transformer": "memprune.families.llamagen.transformer",
    "llamagen_vq": "memprune.families.llamagen.vq",
}

for _old, _new in _MOVED.items():
    _module = importlib.import_module(_new)
    sys.modules[f"{__name__}.{_old}"] = _module
    globals()[_old] = _module
