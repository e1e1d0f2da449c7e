"""Central, site-level differential privacy for federated averaging (DP-FedAvg) and its accounting.

Mechanism (McMahan et al. 2018 [1], Algorithm 1): every site clips its update to L2 norm ``S``;
the coordinator sums the updates with capped weights ``w_k = min(n_k / n_cap, 1) <= 1``, adds
Gaussian noise ``N(0, (z S)^2 I)`` to the sum and divides by a denominator fixed in advance. Adding
or removing one site changes the weighted sum by at most ``S``, so each round is a Gaussian
mechanism with noise multiplier ``z``, subsampled when the sites of a round are sampled.

Accounting uses Google's ``dp-accounting`` [2]: the RDP accountant (the guarantee we state) and
the PLD accountant beside it (tighter, reported for comparison). Three participation models:

``full``
    every registered site is asked every round; add/remove-one-site neighbouring; a Gaussian
    mechanism per round.
``poisson``
    each site is asked independently with probability ``q``; add/remove-one-site;
    ``PoissonSampledDpEvent``.
``fixed``
    exactly ``m`` of the ``n`` sites, uniformly without replacement. ``dp-accounting`` supports this
    only under replace-one-site neighbouring, where the weighted sum's sensitivity is ``2 S``, so
    the event is ``SampledWithoutReplacementDpEvent(n, m, GaussianDpEvent(z / 2))``; there is no
    PLD for it (reported as None). An add/remove guarantee of ``eps`` implies a replace-one
    guarantee of at most ``2 eps``, so the two kinds of figure are not directly comparable.

The privacy ledger is a hash-chained JSONL file, one canonical-JSON entry per noised release; see
``docs/formats.md`` and ``docs/privacy.md``.

References
----------
.. [1] H. B. McMahan, D. Ramage, K. Talwar, L. Zhang, "Learning differentially private recurrent
   language models", ICLR 2018, arXiv:1710.06963.
.. [2] Google DP team, ``dp-accounting`` (https://github.com/google/differential-privacy,
   ``python/dp_accounting``); RDP after I. Mironov, "Rényi differential privacy", CSF 2017, and
   Y.-X. Wang, B. Balle, S. Kasiviswanathan, "Subsampled Rényi differential privacy and analytical
   moments accountant", AISTATS 2019 (sampling without replacement, Theorem 27).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import logging
import math
import secrets
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, TypeAlias

import dp_accounting
import numpy as np
from dp_accounting import pld as dp_pld
from dp_accounting import rdp as dp_rdp
from numpy.typing import NDArray

from ecgdig.errors import PrivacyBudgetError, UpdateRejectedError
from ecgdig.federated.files import ZERO_SHA256, canonical_json, is_valid_id, loads_strict
from ecgdig.io.atomic import atomic_write_text

__all__ = [
    "DEFAULT_DELTA",
    "LEDGER_FORMAT",
    "SAMPLING_MODES",
    "EpsilonReport",
    "LedgerEntry",
    "LedgerSummary",
    "PrivacyBudgetError",
    "RoundPrivacy",
    "SamplingMode",
    "add_gaussian_noise",
    "append_ledger_entry",
    "commit_ledger_entry",
    "epsilon_after",
    "epsilon_for_rounds",
    "make_rng",
    "prepare_ledger_entry",
    "select_sites",
    "verify_ledger",
]

SamplingMode: TypeAlias = Literal["full", "poisson", "fixed"]
SAMPLING_MODES: tuple[SamplingMode, ...] = ("full", "poisson", "fixed")
DEFAULT_DELTA = 1e-5
LEDGER_FORMAT = "ecgdig-privacy-ledger"
_LEDGER_VERSION = 1
_MAX_LEDGER_BYTES = 64 * 1024**2


def make_rng(rng: int | np.random.Generator | None = None) -> np.random.Generator:
    """Return the generator for DP noise and site sampling.

    Parameters
    ----------
    rng : int, Generator or None, optional
        None (production): a PCG64 generator seeded with 128 bits from :mod:`secrets` (the OS
        CSPRNG), so the noise cannot be predicted from any seed we store. An int or Generator
        (tests, simulation): passed through :func:`numpy.random.default_rng`; such noise gives no
        privacy to anyone who knows the seed.

    Returns
    -------
    numpy.random.Generator
        The generator.

    Examples
    --------
    >>> int(make_rng(0).integers(10)) == int(make_rng(0).integers(10))
    True
    """
    if rng is None:
        return np.random.Generator(np.random.PCG64(secrets.randbits(128)))
    return np.random.default_rng(rng)


def add_gaussian_noise(
    total: Mapping[str, NDArray[np.floating]], noise_std: float, rng: np.random.Generator
) -> dict[str, NDArray[np.float64]]:
    """Return ``total + N(0, noise_std^2 I)``, the Gaussian mechanism on a sum of clipped updates.

    Parameters
    ----------
    total : mapping of str to ndarray
        The weighted sum of clipped updates (not modified).
    noise_std : float
        Standard deviation ``z * S`` (>= 0), in the units of the parameters.
    rng : numpy.random.Generator
        The source (:func:`make_rng`); draws are made tensor by tensor in sorted name order.

    Returns
    -------
    dict of str to float64 ndarray
        The noised sum.

    Notes
    -----
    Floating-point Gaussian sampling is not an exact implementation of the Gaussian mechanism
    (see ``docs/privacy.md``); the accounting assumes it is.

    Examples
    --------
    >>> import numpy as np
    >>> out = add_gaussian_noise({"w": np.zeros(3)}, 0.0, make_rng(0))
    >>> out["w"].tolist()
    [0.0, 0.0, 0.0]
    """
    if not (math.isfinite(noise_std) and noise_std >= 0):
        raise ValueError(f"noise_std must be finite and >= 0, got {noise_std!r}")
    return {
        name: np.asarray(total[name], dtype=np.float64)
        + rng.normal(0.0, noise_std, size=np.shape(total[name]))
        for name in sorted(total)
    }


def select_sites(
    site_ids: Sequence[str],
    *,
    sampling: SamplingMode,
    q: float = 1.0,
    sample_size: int | None = None,
    rng: np.random.Generator | None = None,
) -> list[str]:
    """Draw the sites asked to train in a round, as the accounting assumes.

    Parameters
    ----------
    site_ids : sequence of str
        All registered sites.
    sampling : {"full", "poisson", "fixed"}
        Participation model (see the module docstring).
    q : float, optional
        Poisson probability, in (0, 1].
    sample_size : int, optional
        ``m`` for ``fixed``.
    rng : numpy.random.Generator, optional
        Source of the draw (required unless ``sampling == "full"``).

    Returns
    -------
    list of str
        The selected ids, sorted.

    Examples
    --------
    >>> select_sites(["b", "a"], sampling="full")
    ['a', 'b']
    >>> len(select_sites(["a", "b", "c"], sampling="fixed", sample_size=2, rng=make_rng(1)))
    2
    """
    ordered = sorted(site_ids)
    if sampling == "full":
        return ordered
    if rng is None:
        raise ValueError(f"{sampling} sampling needs an rng")
    if sampling == "poisson":
        if not 0 < q <= 1:
            raise ValueError(f"q must be in (0, 1], got {q!r}")
        draws = rng.random(len(ordered))
        return [site for site, u in zip(ordered, draws, strict=True) if u < q]
    if sampling == "fixed":
        if sample_size is None or not 0 < sample_size <= len(ordered):
            raise ValueError(f"sample_size must be in 1..{len(ordered)}, got {sample_size!r}")
        chosen = rng.choice(len(ordered), size=sample_size, replace=False)
        return sorted(ordered[int(i)] for i in chosen)
    raise ValueError(f"unknown sampling {sampling!r}; choose one of {', '.join(SAMPLING_MODES)}")


@dataclass(frozen=True)
class RoundPrivacy:
    """The privacy-relevant parameters of one noised round.

    Parameters
    ----------
    noise_multiplier : float
        ``z`` > 0: noise std is ``z * S``.
    sampling : {"full", "poisson", "fixed"}
        Participation model.
    q : float, optional
        Sampling rate: 1 for ``full``, the Poisson probability, or ``m / n`` for ``fixed``.
    population : int, optional
        ``n``, the number of registered sites (required for ``fixed``).
    sample_size : int, optional
        ``m`` (required for ``fixed``).
    """

    noise_multiplier: float
    sampling: SamplingMode
    q: float = 1.0
    population: int | None = None
    sample_size: int | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier > 0):
            raise ValueError(f"noise multiplier must be finite and > 0, got {self.noise_multiplier!r}")
        if self.sampling not in SAMPLING_MODES:
            raise ValueError(f"unknown sampling {self.sampling!r}; choose one of {', '.join(SAMPLING_MODES)}")
        if not 0 < self.q <= 1:
            raise ValueError(f"q must be in (0, 1], got {self.q!r}")
        if self.sampling == "full" and self.q != 1.0:
            raise ValueError(f"full participation means q = 1, got {self.q!r}")
        if self.sampling == "fixed":
            n, m = self.population, self.sample_size
            if n is None or m is None or not 0 < m <= n:
                raise ValueError(
                    f"fixed-size sampling needs 0 < sample_size <= population, got {m!r} of {n!r}"
                )
            if not math.isclose(self.q, m / n, rel_tol=1e-12):
                raise ValueError(f"q must equal sample_size / population = {m / n!r}, got {self.q!r}")

    @property
    def neighboring_relation(self) -> dp_accounting.NeighboringRelation:
        """Add/remove one site, or replace one site for fixed-size sampling."""
        if self.sampling == "fixed":
            return dp_accounting.NeighboringRelation.REPLACE_ONE
        return dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE

    def dp_event(self) -> dp_accounting.DpEvent:
        """Return the ``dp-accounting`` event of one such round."""
        if self.sampling == "full":
            return dp_accounting.GaussianDpEvent(self.noise_multiplier)
        if self.sampling == "poisson":
            return dp_accounting.PoissonSampledDpEvent(
                self.q, dp_accounting.GaussianDpEvent(self.noise_multiplier)
            )
        if self.population is None or self.sample_size is None:  # excluded by __post_init__
            raise ValueError("fixed-size sampling needs population and sample_size")
        # Replace-one sensitivity of the capped-weight sum is 2 S, and the noise std is z S: relative
        # to the sensitivity the noise multiplier is z / 2 (dp-accounting's convention, see
        # _compute_rdp_sample_wor_gaussian: "ratio of the standard deviation ... to the l2-sensitivity").
        return dp_accounting.SampledWithoutReplacementDpEvent(
            self.population, self.sample_size, dp_accounting.GaussianDpEvent(self.noise_multiplier / 2.0)
        )


@dataclass(frozen=True)
class EpsilonReport:
    """Epsilon after a sequence of rounds, for a given delta.

    Parameters
    ----------
    rdp : float
        From the RDP accountant (the guarantee ecgdig states and limits).
    pld : float or None
        From the PLD accountant; None where ``dp-accounting`` has no PLD (fixed-size sampling).
    delta : float
        The delta both refer to.
    """

    rdp: float
    pld: float | None
    delta: float


class _DropNonConvergence(logging.Filter):
    """Hide dp-accounting's warnings that it skipped a fractional RDP order (a conservative step)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "failed to converge" not in record.getMessage()


@contextlib.contextmanager
def _quiet_absl() -> Iterator[None]:
    logger = logging.getLogger("absl")
    log_filter = _DropNonConvergence()
    logger.addFilter(log_filter)
    try:
        yield
    finally:
        logger.removeFilter(log_filter)


def _grouped_event(rounds: Sequence[RoundPrivacy]) -> dp_accounting.DpEvent:
    # Consecutive identical events are self-composed: the same result as composing them one by one,
    # computed far faster (and, for the PLD, with one discretization instead of T).
    groups: list[tuple[dp_accounting.DpEvent, int]] = []
    for item in rounds:
        event = item.dp_event()
        if groups and groups[-1][0] == event:
            groups[-1] = (event, groups[-1][1] + 1)
        else:
            groups.append((event, 1))
    events = [dp_accounting.SelfComposedDpEvent(event, count) for event, count in groups]
    return events[0] if len(events) == 1 else dp_accounting.ComposedDpEvent(events)


def epsilon_for_rounds(
    rounds: Sequence[RoundPrivacy], delta: float, *, with_pld: bool = True
) -> EpsilonReport:
    """Return epsilon after composing ``rounds`` (which may differ in ``z`` or ``q``).

    Parameters
    ----------
    rounds : sequence of RoundPrivacy
        The noised rounds so far, in order; all with the same sampling mode (the neighbouring
        relation must not change during a federation).
    delta : float
        Target delta in (0, 1).
    with_pld : bool, optional
        Also run the PLD accountant (about a second per distinct round type; default True).

    Returns
    -------
    EpsilonReport
        RDP and PLD epsilons (0 for no rounds; PLD None if not requested or not available).

    Raises
    ------
    ValueError
        Mixed sampling modes or an invalid delta.
    """
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta!r}")
    if not rounds:
        return EpsilonReport(rdp=0.0, pld=0.0, delta=delta)
    if len({r.sampling for r in rounds}) > 1:
        raise ValueError("all rounds of a federation must use the same sampling mode")
    relation = rounds[0].neighboring_relation
    event = _grouped_event(rounds)
    with _quiet_absl():
        rdp_accountant = dp_rdp.RdpAccountant(neighboring_relation=relation)
        rdp_accountant.compose(event)
        eps_rdp = float(rdp_accountant.get_epsilon(delta))
        eps_pld: float | None = None
        if with_pld and rounds[0].sampling != "fixed":
            pld_accountant = dp_pld.PLDAccountant(neighboring_relation=relation)
            pld_accountant.compose(event)
            eps_pld = float(pld_accountant.get_epsilon(delta))
    return EpsilonReport(rdp=eps_rdp, pld=eps_pld, delta=delta)


def epsilon_after(
    rounds: int,
    z: float,
    q: float,
    delta: float,
    sampling: SamplingMode = "full",
    *,
    population: int | None = None,
    with_pld: bool = True,
) -> EpsilonReport:
    """Return epsilon after ``rounds`` identical noised rounds.

    Parameters
    ----------
    rounds : int
        ``T`` >= 0.
    z : float
        Noise multiplier.
    q : float
        Sampling rate (1 for ``full``; ``m / n`` for ``fixed``).
    delta : float
        Target delta.
    sampling : {"full", "poisson", "fixed"}, optional
        Participation model.
    population : int, optional
        ``n``, required for ``fixed`` (then ``m = q n`` must be an integer).
    with_pld : bool, optional
        Also run the (slower) PLD accountant.

    Returns
    -------
    EpsilonReport
        RDP and PLD epsilons.

    Examples
    --------
    The design's figures (dp-accounting 0.6.0): 50 rounds, z = 1, delta = 1e-5.

    >>> r = epsilon_after(50, 1.0, 1.0, 1e-5)
    >>> round(r.rdp, 1), round(r.pld, 1)
    (57.3, 54.4)
    >>> r = epsilon_after(50, 1.0, 0.5, 1e-5, "poisson")
    >>> round(r.rdp, 1), round(r.pld, 1)
    (28.0, 25.8)
    """
    if rounds < 0:
        raise ValueError(f"rounds must be >= 0, got {rounds}")
    sample_size = None
    if sampling == "fixed":
        if population is None:
            raise ValueError("fixed-size sampling needs the population size")
        sample_size = round(q * population)
    one = RoundPrivacy(
        noise_multiplier=z, sampling=sampling, q=q, population=population, sample_size=sample_size
    )
    return epsilon_for_rounds([one] * rounds, delta, with_pld=with_pld)


# --------------------------------------------------------------------------------------------------
# The privacy ledger


@dataclass(frozen=True)
class LedgerEntry:
    """One noised release, as recorded in the ledger.

    Parameters
    ----------
    seq : int
        0-based position in the ledger; ``T = seq + 1`` releases so far.
    federation_id : str
        The federation.
    round : int
        The round whose updates were aggregated (a rerun of a round adds another entry).
    sampling : {"full", "poisson", "fixed"}
        Participation model.
    q : float
        Sampling rate.
    population : int or None
        Registered sites ``n``.
    sample_size : int or None
        ``m`` for fixed-size sampling.
    noise_multiplier : float
        ``z``.
    clip_norm : float
        ``S``.
    denominator : float
        The fixed denominator of the mean.
    n_sites : int
        Updates accepted in this round (coordinator-private information).
    delta : float
        Target delta.
    epsilon_rdp : float
        RDP epsilon after this entry (all releases so far).
    epsilon_pld : float or None
        PLD epsilon after this entry; None where not available.
    accountant : str
        Library and version used, e.g. ``"dp-accounting 0.6.0"``.
    prev_hash : str
        ``hash`` of the previous entry, or 64 zeros for the first.
    hash : str
        SHA-256 of the canonical JSON of this entry without ``hash``.
    """

    seq: int
    federation_id: str
    round: int
    sampling: SamplingMode
    q: float
    population: int | None
    sample_size: int | None
    noise_multiplier: float
    clip_norm: float
    denominator: float
    n_sites: int
    delta: float
    epsilon_rdp: float
    epsilon_pld: float | None
    accountant: str
    prev_hash: str
    hash: str = ""

    def body(self) -> dict[str, Any]:
        """Return the entry as a JSON object without ``hash`` (what the hash covers)."""
        data = asdict(self)
        del data["hash"]
        data["format"] = LEDGER_FORMAT
        data["version"] = _LEDGER_VERSION
        return data

    def compute_hash(self) -> str:
        """Return SHA-256 of the canonical JSON of :meth:`body`."""
        return hashlib.sha256(canonical_json(self.body()).encode("utf-8")).hexdigest()

    def to_line(self) -> str:
        """Return the canonical JSON line (without the newline)."""
        return canonical_json({**self.body(), "hash": self.hash})

    def round_privacy(self) -> RoundPrivacy:
        """Return the accounting parameters of this release."""
        return RoundPrivacy(
            noise_multiplier=self.noise_multiplier,
            sampling=self.sampling,
            q=self.q,
            population=self.population,
            sample_size=self.sample_size,
        )


@dataclass(frozen=True)
class LedgerSummary:
    """A verified ledger.

    Parameters
    ----------
    entries : tuple of LedgerEntry
        All entries, in order.
    head_hash : str
        Hash of the last entry (64 zeros when empty).
    """

    entries: tuple[LedgerEntry, ...]
    head_hash: str

    @property
    def epsilon_rdp(self) -> float:
        """RDP epsilon spent so far (0 when empty)."""
        return self.entries[-1].epsilon_rdp if self.entries else 0.0

    @property
    def epsilon_pld(self) -> float | None:
        """PLD epsilon spent so far (0 when empty, None where not available)."""
        return self.entries[-1].epsilon_pld if self.entries else 0.0


_ENTRY_TYPES: Mapping[str, tuple[type, ...]] = {
    "seq": (int,),
    "federation_id": (str,),
    "round": (int,),
    "sampling": (str,),
    "q": (float, int),
    "population": (int, type(None)),
    "sample_size": (int, type(None)),
    "noise_multiplier": (float, int),
    "clip_norm": (float, int),
    "denominator": (float, int),
    "n_sites": (int,),
    "delta": (float,),
    "epsilon_rdp": (float, int),
    "epsilon_pld": (float, int, type(None)),
    "accountant": (str,),
    "prev_hash": (str,),
    "hash": (str,),
}


def _parse_entry(line: str, index: int, path: Path) -> LedgerEntry:
    where = f"ledger entry {index}"
    try:
        data = loads_strict(line)
    except ValueError as exc:
        raise UpdateRejectedError(f"{where}: not valid JSON ({exc})", path) from None
    if (
        not isinstance(data, dict)
        or data.get("format") != LEDGER_FORMAT
        or data.get("version") != _LEDGER_VERSION
    ):
        raise UpdateRejectedError(f"{where}: not an {LEDGER_FORMAT} version {_LEDGER_VERSION} entry", path)
    fields = {k: v for k, v in data.items() if k not in ("format", "version")}
    if set(fields) != set(_ENTRY_TYPES):
        diff = sorted(set(fields) ^ set(_ENTRY_TYPES))
        raise UpdateRejectedError(f"{where}: missing or unknown field(s) {', '.join(diff)}", path)
    for name, types in _ENTRY_TYPES.items():
        if isinstance(fields[name], bool) or not isinstance(fields[name], types):
            raise UpdateRejectedError(f"{where}: field {name} has the wrong type", path)
    if fields["sampling"] not in SAMPLING_MODES or not is_valid_id(fields["federation_id"]):
        raise UpdateRejectedError(f"{where}: invalid sampling or federation id", path)
    entry = LedgerEntry(**fields)
    if entry.to_line() != line:
        raise UpdateRejectedError(f"{where}: not in canonical JSON form", path)
    return entry


def verify_ledger(
    path: str | Path, *, federation_id: str | None = None, recompute: bool = False
) -> LedgerSummary:
    """Check a privacy ledger's hash chain and consistency.

    Detects an edited entry (its hash no longer matches), a deleted or reordered entry (the next
    ``prev_hash`` or ``seq`` breaks), and entries from another federation. Deleting entries at the
    end leaves a valid shorter chain: the coordinator also records the ledger's length and head
    hash in each round folder and checks them (see :mod:`ecgdig.federated.coordinator`).

    Parameters
    ----------
    path : str or Path
        The ``ledger.jsonl`` file.
    federation_id : str, optional
        Require every entry to belong to this federation.
    recompute : bool, optional
        Also recompute the final epsilons from the recorded parameters with ``dp-accounting`` and
        compare (a few seconds for the PLD).

    Returns
    -------
    LedgerSummary
        The entries and head hash.

    Raises
    ------
    UpdateRejectedError
        Missing file, malformed line, broken chain, inconsistent parameters, or (with
        ``recompute``) an epsilon that does not match.
    """
    path = Path(path)
    if not path.is_file():
        raise UpdateRejectedError("privacy ledger not found", path)
    if path.stat().st_size > _MAX_LEDGER_BYTES:
        raise UpdateRejectedError(f"privacy ledger is larger than {_MAX_LEDGER_BYTES} bytes", path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UpdateRejectedError("privacy ledger is not UTF-8 text", path) from None
    if text and not text.endswith("\n"):
        raise UpdateRejectedError("privacy ledger does not end with a newline (truncated write?)", path)
    entries: list[LedgerEntry] = []
    prev = ZERO_SHA256
    for index, line in enumerate(text.splitlines()):
        entry = _parse_entry(line, index, path)
        where = f"ledger entry {index}"
        if entry.seq != index:
            raise UpdateRejectedError(f"{where}: seq is {entry.seq} (entries deleted or reordered)", path)
        if entry.prev_hash != prev:
            raise UpdateRejectedError(
                f"{where}: prev_hash does not match the previous entry (chain broken)", path
            )
        if entry.hash != entry.compute_hash():
            raise UpdateRejectedError(f"{where}: hash mismatch (the entry was edited)", path)
        if federation_id is not None and entry.federation_id != federation_id:
            raise UpdateRejectedError(
                f"{where}: federation {entry.federation_id!r}, expected {federation_id!r}", path
            )
        if entries:
            first, last = entries[0], entries[-1]
            if (entry.federation_id, entry.delta, entry.sampling) != (
                first.federation_id,
                first.delta,
                first.sampling,
            ):
                raise UpdateRejectedError(
                    f"{where}: federation, delta or sampling mode changed mid-ledger", path
                )
            if entry.round < last.round or entry.epsilon_rdp < last.epsilon_rdp:
                raise UpdateRejectedError(f"{where}: round or epsilon decreased", path)
        entries.append(entry)
        prev = entry.hash
    summary = LedgerSummary(entries=tuple(entries), head_hash=prev)
    if recompute and entries:
        try:
            report = epsilon_for_rounds([e.round_privacy() for e in entries], entries[-1].delta)
        except ValueError as exc:
            raise UpdateRejectedError(f"cannot recompute epsilon: {exc}", path) from None
        recorded = (entries[-1].epsilon_rdp, entries[-1].epsilon_pld)
        if not _close(report.rdp, recorded[0]) or not _close(report.pld, recorded[1]):
            raise UpdateRejectedError(
                f"recorded epsilon (RDP {recorded[0]}, PLD {recorded[1]}) does not match the recomputed "
                f"(RDP {report.rdp}, PLD {report.pld})",
                path,
            )
    return summary


def _close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def _accountant_version() -> str:
    try:
        return f"dp-accounting {importlib.metadata.version('dp-accounting')}"
    except importlib.metadata.PackageNotFoundError:
        return "dp-accounting (version unknown)"


def prepare_ledger_entry(
    path: str | Path,
    *,
    federation_id: str,
    round: int,
    privacy: RoundPrivacy,
    clip_norm: float,
    denominator: float,
    n_sites: int,
    delta: float,
    max_epsilon: float | None = None,
) -> LedgerEntry:
    """Compute the next ledger entry and check the budget, writing nothing.

    Call it before drawing any noise: it raises :class:`PrivacyBudgetError` if the release would
    push epsilon above ``max_epsilon``. Then draw the noise, and record the entry with
    :func:`commit_ledger_entry` before publishing the noised model.

    Parameters
    ----------
    path : str or Path
        The ledger (a missing file is an empty ledger).
    federation_id : str
        The federation.
    round : int
        The round being aggregated.
    privacy : RoundPrivacy
        This release's accounting parameters.
    clip_norm : float
        ``S``.
    denominator : float
        The fixed denominator.
    n_sites : int
        Updates aggregated.
    delta : float
        Target delta (must equal earlier entries').
    max_epsilon : float, optional
        Refuse if the RDP epsilon after this release would exceed it.

    Returns
    -------
    LedgerEntry
        The entry, hashed, not yet written.

    Raises
    ------
    PrivacyBudgetError
        Over budget, or epsilon unbounded.
    UpdateRejectedError
        The existing ledger fails verification.
    """
    path = Path(path)
    summary = (
        verify_ledger(path, federation_id=federation_id) if path.exists() else LedgerSummary((), ZERO_SHA256)
    )
    history = [e.round_privacy() for e in summary.entries]
    if summary.entries and (
        summary.entries[0].delta != delta or summary.entries[0].sampling != privacy.sampling
    ):
        raise UpdateRejectedError("delta or sampling mode differs from the ledger's earlier entries", path)
    report = epsilon_for_rounds([*history, privacy], delta)
    if not math.isfinite(report.rdp):
        raise PrivacyBudgetError(f"round {round}: epsilon would be unbounded; no noise was drawn", path)
    if max_epsilon is not None and report.rdp > max_epsilon:
        raise PrivacyBudgetError(
            f"round {round} would bring epsilon to {report.rdp:.3f} (RDP, delta={delta:g}), over the limit "
            f"{max_epsilon:g}; refused before any noise was drawn",
            path,
        )
    entry = LedgerEntry(
        seq=len(summary.entries),
        federation_id=federation_id,
        round=round,
        sampling=privacy.sampling,
        q=float(privacy.q),
        population=privacy.population,
        sample_size=privacy.sample_size,
        noise_multiplier=float(privacy.noise_multiplier),
        clip_norm=float(clip_norm),
        denominator=float(denominator),
        n_sites=int(n_sites),
        delta=float(delta),
        epsilon_rdp=report.rdp,
        epsilon_pld=report.pld,
        accountant=_accountant_version(),
        prev_hash=summary.head_hash,
    )
    return LedgerEntry(**{**asdict(entry), "hash": entry.compute_hash()})


def commit_ledger_entry(path: str | Path, entry: LedgerEntry) -> LedgerSummary:
    """Append a prepared entry atomically, if the ledger has not moved since it was prepared.

    Parameters
    ----------
    path : str or Path
        The ledger.
    entry : LedgerEntry
        From :func:`prepare_ledger_entry`.

    Returns
    -------
    LedgerSummary
        The ledger after the append.

    Raises
    ------
    UpdateRejectedError
        The ledger changed (its head is no longer ``entry.prev_hash``) or fails verification.
    """
    path = Path(path)
    summary = verify_ledger(path) if path.exists() else LedgerSummary((), ZERO_SHA256)
    if summary.head_hash != entry.prev_hash or len(summary.entries) != entry.seq:
        raise UpdateRejectedError("the ledger changed since the entry was prepared", path)
    if entry.hash != entry.compute_hash():
        raise ValueError("entry hash does not match its content")
    lines = [e.to_line() for e in summary.entries] + [entry.to_line()]
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return LedgerSummary(entries=(*summary.entries, entry), head_hash=entry.hash)


def append_ledger_entry(
    path: str | Path,
    *,
    federation_id: str,
    round: int,
    privacy: RoundPrivacy,
    clip_norm: float,
    denominator: float,
    n_sites: int,
    delta: float,
    max_epsilon: float | None = None,
) -> LedgerEntry:
    """Prepare and commit one entry (see :func:`prepare_ledger_entry` for the parameters).

    Returns
    -------
    LedgerEntry
        The entry written.
    """
    entry = prepare_ledger_entry(
        path,
        federation_id=federation_id,
        round=round,
        privacy=privacy,
        clip_norm=clip_norm,
        denominator=denominator,
        n_sites=n_sites,
        delta=delta,
        max_epsilon=max_epsilon,
    )
    commit_ledger_entry(path, entry)
    return entry
