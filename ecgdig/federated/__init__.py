"""Federated training over signed files: the model-agnostic core.

Hospitals exchange signed safetensors files (USB, SFTP, a shared folder); nothing here knows the
segmentation model, everything works on ``dict[str, numpy.ndarray]`` of float32 tensors.

Modules
-------
strategies
    Pure aggregation math: clipping, weighted means, FedAvg / FedProx / FedAdam / FedYogi steps.
files
    The protocol file format: safetensors + canonical signed JSON header, payload hash.
keys
    Ed25519 site keys and the federation's registry of public keys.
validate
    Accept or reject update and model files, with one-line reasons.
privacy
    Central DP (DP-FedAvg): Gaussian noise, ``dp-accounting`` epsilons, the hash-chained ledger.
coordinator
    Plan, round folders, the site's ``make_update`` and the coordinator's ``aggregate_round``.

The submodules are imported explicitly (``from ecgdig.federated.coordinator import ...``) so that
importing the package stays cheap.
"""

__all__ = ["coordinator", "files", "keys", "privacy", "strategies", "validate"]
