"""Calibration: fit the cost model's efficiencies and link terms to measurements, and check them.

Public API (used by ``paratune calibrate``):

* ``fit_profile(profiles_dir, device, *, holdout=(), name=None) -> FitResult`` (``.profile``, ``.report``);
* ``write_profile(profile, path)``;
* ``check_profile(profiles_dir, device, profile) -> CheckReport`` (``.to_dict()``: ``mape``,
  ``max_abs_pct_error``, ``rows``, ``per_op``);
* ``default_profile_for(device) -> Profile`` (the profile shipped for a device folder name);
* ``measure(device, out_dir, *, quick=False) -> Path`` (microbenchmarks with torch, imported lazily);
* ``fit_from_aiconfigurator(system, *, backend, version, name) -> FitResult``: a profile fitted to NVIDIA
  AIConfigurator's measured tables (the optional extra ``paratune[silicon]``), ``<gpu>-aic``;
* ``fit_with_attention(profiles_dir, device, ...) -> FitResult``: ``fit_profile`` plus the attention
  curves of a measured ``attention.csv`` (``fit_attention``);
* ``prediction_gap(profiles_dir, device, first, second) -> dict``: the largest relative difference of two
  profiles' predictions on every row, how fits are compared (some parameters are weakly determined);
  ``parameter_gaps(first, second) -> dict``: the same per well-determined fitted parameter;
* ``calibrate_local(*, quick=False, force=False) -> (Path, FitResult | None)``: measure this CPU, fit
  ``cpu-local`` and cache it outside the repository (``paratune calibrate local``);
* ``validate_cpu(...) -> dict``: a real model run on this CPU (1 process, TP2, PP2) against the cost model.
"""

from ._aic_fit import fit_from_aiconfigurator
from ._attention import fit_attention, fit_with_attention
from ._check import CheckReport, check_profile
from ._compare import parameter_gaps, prediction_gap
from ._devices import default_profile_for, platform_for
from ._e2e import validate_cpu
from ._fit import FitResult, fit_profile
from ._local import calibrate_local
from ._measure import measure
from ._published import MEGATRON_TABLE1, PublishedComparison, compare_llmcompass, compare_megatron, compare_published
from ._read import read_measurements
from ._write import write_profile

__all__ = [
    "MEGATRON_TABLE1",
    "CheckReport",
    "FitResult",
    "PublishedComparison",
    "calibrate_local",
    "check_profile",
    "compare_llmcompass",
    "compare_megatron",
    "compare_published",
    "default_profile_for",
    "fit_attention",
    "fit_from_aiconfigurator",
    "fit_profile",
    "fit_with_attention",
    "measure",
    "parameter_gaps",
    "platform_for",
    "prediction_gap",
    "read_measurements",
    "validate_cpu",
    "write_profile",
]
