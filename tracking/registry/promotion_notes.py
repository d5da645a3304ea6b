"""What a promotion writes for people: the model version's description (MLflow shows it on
the version's page) and the champion run's note (its description in the UI), so the
registry tells why a version is the champion without opening the history tags."""

from __future__ import annotations

from typing import Any

from ..store import ui_url

RUN_NOTE = "mlflow.note.content"  # MLflow's tag for a run's description


def version_description(decision: dict[str, Any], *, fingerprint: str,
                        parent_run_id: str | None, experiment_id: str) -> str:
    """Markdown: the decision and its numbers (n, accuracies, difference and CI, McNemar
    p), the study and trial with their runs, and the data fingerprint."""
    alias, accuracy = decision["alias"], decision["candidate_test_accuracy"]
    lines = [f"**Promoted to @{alias}** on {decision['at']}: {decision['reason']}.", ""]
    if decision.get("p_value") is None:
        lines.append(f"- test accuracy {accuracy:.4f} on n = {decision['n']} test images "
                     f"(no champion to compare with)")
    else:
        low, high = decision["ci95"]
        lines += [
            f"- n = {decision['n']} test images, both models on the same ones",
            f"- candidate test accuracy {accuracy:.4f}, champion (version "
            f"{decision['champion_version']}) {decision['champion_test_accuracy']:.4f}",
            f"- difference {decision['difference']:+.4f}, 95% paired bootstrap CI "
            f"[{low:+.4f}, {high:+.4f}]",
            f"- exact McNemar p = {decision['p_value']:.4g} (b = {decision['b_champion_only']} "
            f"only the champion right, c = {decision['c_candidate_only']} only the candidate); "
            f"alpha {decision['alpha']:g}, min_improvement {decision['min_improvement']:g}"]
    study = (f"study **{decision['study']}** (experiment {experiment_id}, parent run "
             f"{parent_run_id})" if parent_run_id else f"study **{decision['study']}**")
    lines += [f"- trial #{decision['trial']} of {study}, run {decision['run_id']}",
              f"- data fingerprint {fingerprint}"]
    return "\n".join(lines)


def run_note(model_name: str, version: str, decision: dict[str, Any], *,
             parent_run_id: str | None, experiment_id: str) -> str:
    """The champion run's note: which version it became, and the way back to its study."""
    study = decision["study"]
    trials = ui_url("", experiment_id, study).lstrip("/")  # relative: any host or prefix
    link = (f" [Its study's trials]({trials}) (parent run {parent_run_id})."
            if parent_run_id else "")
    return (f"Promoted as **{model_name} version {version}** (@{decision['alias']}) on "
            f"{decision['at']}: trial #{decision['trial']} of study **{study}**.{link}")
