"""Federated training over signed files: the model-agnostic core.

Hospitals exchange signed safetensors files (USB, SFTP, a shared folder). The core (strategies,
files, keys, validate, privacy, coordinator, secagg) does not know the segmentation model and works
on ``dict[str, numpy.ndarray]`` of float32 tensors; ``site`` and ``simulate`` bring in the U-Net.

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
site
    A site's round on the U-Net: verify the global model, train locally (FedProx), write the update.
secagg, secagg_files, secagg_masking, secagg_shamir
    Secure aggregation (Bonawitz et al. 2017) as signed file exchanges: key advertisement, Shamir
    shares, fixed-point masked inputs, unmasking with dropout recovery.
simulate
    ``fed-simulate``: N non-IID sites on one machine through the same site and coordinator code.

The submodules are imported explicitly (``from ecgdig.federated.coordinator import ...``) so that
importing the package stays cheap.
"""

__all__ = [
    "coordinator",
    "files",
    "keys",
    "privacy",
    "secagg",
    "secagg_files",
    "secagg_masking",
    "secagg_shamir",
    "simulate",
    "site",
    "strategies",
    "validate",
]
