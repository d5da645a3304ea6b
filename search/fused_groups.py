"""Which trials of a study can be fused, and what a group fixes (no torch, no Optuna).

`search.fuse: K` trains up to K trials at once as one model (`tunetrack.models.fused_*`).
A group is the shared part of the parameters (architecture and data stream, see
`models.fused_fields`) sampled once, by the group's first trial, plus each member's own
recipe sampled by the sampler as usual. `tunetrack validate` calls `fuse_problems`, so a
study that cannot fuse fails before anything is written.
"""

from __future__ import annotations

from typing import Any

from tunetrack.models.choices import FAMILIES
from tunetrack.models.errors import TunetrackError
from tunetrack.models.fused_fields import (
    CPU_FUSE_MAX_MACS,
    CPU_FUSE_MAX_MACS_USER,
    FUSABLE_FAMILIES,
    is_shared,
)

from .config import StudySpec

GROUP_ATTR = "fused_group"  # Optuna user attr of every fused trial: its group's name
GROUP_TAG = "tunetrack.fused_group"  # the same on the trial's MLflow run
# samplers that enumerate whole parameter sets; a group would have to take several of
# them at once, which Optuna's GridSampler cannot hand out: these studies run unfused
UNFUSED_SAMPLERS = ("grid",)


def user_networks(spec: StudySpec, families: list[Any] | None) -> list[str]:
    """The study's own networks, which fuse through torch.func: `model.class_path` (it
    replaces any family), else the families that are plugins (not tunetrack's)."""
    path = spec.model.class_path
    if path is not None:
        choices = getattr(path, "choice", None)  # a searched class_path: each choice
        return [str(p) for p in choices] if choices is not None else [str(path)]
    return [str(f) for f in families or [] if f not in FAMILIES]


def fuse_problems(spec: StudySpec, families: list[Any] | None) -> list[str]:
    """Why `search.fuse` cannot work for this study (one line each); [] when it can.

    `families`: every `model.family` the study can draw (None: the default family)."""
    k = spec.search.fuse
    if k == 1 or user_networks(spec, families):
        return []
    families = families or ["mlp"]
    if not any(f in FUSABLE_FAMILIES for f in families):
        return [f"search.fuse: fusing {k} trials needs model.family "
                f"{' or '.join(FUSABLE_FAMILIES)} but the study trains "
                f"{', '.join(map(str, families))}; use fuse: 1"]
    return []


def override_fuse(spec: StudySpec, k: int) -> None:
    """`--fuse K` from the command line: replaces the file's value, checked the same way."""
    from .space import SearchSpace

    spec.search.fuse = k
    problems = fuse_problems(spec, SearchSpace(spec).options("model.family"))
    if problems:
        raise TunetrackError(problems[0].replace("search.fuse:", "--fuse:", 1))


def fuse_notes(spec: StudySpec, families: list[Any] | None) -> list[str]:
    """What a user should know about how this study fuses (validate and run print these)."""
    k = spec.search.fuse
    if k == 1:
        return []
    if spec.search.sampler in UNFUSED_SAMPLERS:
        return [f"search.fuse: {k} ignored: the {spec.search.sampler} sampler hands out whole "
                f"parameter sets one at a time, so trials train unfused (fuse: 1)"]
    own = user_networks(spec, families)
    other = ([] if spec.model.class_path is not None  # it replaces every family
             else [f for f in families or [] if f not in (*FUSABLE_FAMILIES, *own)])
    limit = f"{CPU_FUSE_MAX_MACS / 1e6:.0f} M"
    if spec.model.class_path is not None:
        limit = f"{CPU_FUSE_MAX_MACS_USER / 1e6:.0f} M"
    elif own:
        limit += f" ({', '.join(own)}: {CPU_FUSE_MAX_MACS_USER / 1e6:.0f} M)"
    notes = [f"search.fuse: up to {k} trials train at once as one model; they share "
             f"architecture, batch size, augmentation and batch order; each has its own "
             f"optimizer, schedule and recipe (docs/fused_trials.md)",
             f"search.fuse: on a CPU only architectures of at most {limit} multiply-adds "
             f"per trial and training step fuse (larger ones gain little there); on a GPU "
             f"every group does"]
    if own:
        notes.append(f"search.fuse: {', '.join(own)}: a group's trials share its init_args and "
                     f"train as one model through torch.func (vmap); a network vmap cannot "
                     f"run trains unfused, and `run -v` says why; dropout inside it draws "
                     f"each member's masks from torch's generator, not the masks of the "
                     f"same trial alone")
    if other:
        notes.append(f"search.fuse: trials that draw model.family {', '.join(other)} train "
                     f"unfused")
    return notes


def effective_fuse(spec: StudySpec) -> int:
    """K as the study will use it: 1 with a sampler that cannot fuse."""
    return 1 if spec.search.sampler in UNFUSED_SAMPLERS else spec.search.fuse


def shared_values(params: dict[str, Any]) -> dict[str, Any]:
    """The shared part of a trial's sampled parameters: what its group fixes."""
    return {path: value for path, value in params.items() if is_shared(path)}
