"""Save and load a trained classifier as `state_dict` + the config that rebuilds it.

Only plain types go into the file, so loading works with `weights_only=True` (no pickle
code execution from a downloaded checkpoint).
"""

from __future__ import annotations

from pathlib import Path

import torch

from .config import TrialConfig
from .errors import TunetrackError
from .nets import Classifier, create


def save_checkpoint(path: str | Path, model: Classifier, cfg: TrialConfig, classes: list[str],
                    input_shape: tuple[int, ...]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "config": cfg.to_dict(), "classes": list(classes),
                "input_shape": list(input_shape)}, path)
    return path


def load_checkpoint(path: str | Path) -> tuple[Classifier, TrialConfig, list[str]]:
    """Rebuild the network from the stored config and load its weights (eval mode, CPU).

    The network is built with `pretrained=False`: the checkpoint holds every weight, so the
    pretrained file a transfer trial started from is neither read nor needed any more.
    """
    path = Path(path)
    if not path.is_file():
        raise TunetrackError(f"checkpoint {path} does not exist")
    raw = torch.load(path, map_location="cpu", weights_only=True)
    cfg = TrialConfig.from_dict(raw["config"])
    classes = list(raw["classes"])
    model = create(cfg.model, raw["input_shape"], len(classes), pretrained=False)
    model.load_state_dict(raw["state_dict"])
    return model.eval(), cfg, classes
