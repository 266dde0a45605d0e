"""Calibration: fit the cost model's efficiencies and link terms to measurements, and check them.

Public API (used by ``paratune calibrate``):

* ``fit_profile(profiles_dir, device, *, holdout=(), name=None) -> FitResult`` (``.profile``, ``.report``);
* ``write_profile(profile, path)``;
* ``check_profile(profiles_dir, device, profile) -> CheckReport`` (``.to_dict()``: ``mape``,
  ``max_abs_pct_error``, ``rows``, ``per_op``);
* ``default_profile_for(device) -> Profile`` (the profile shipped for a device folder name);
* ``measure(device, out_dir, *, quick=False) -> Path`` (microbenchmarks with torch, imported lazily).
"""
