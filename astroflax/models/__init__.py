"""Neural-network models for astroflax (Flax NNX).

Modules
-------
lightcurve
    Continuous-time transformer for irregularly sampled, multi-band light
    curves: :class:`~astroflax.models.lightcurve.TimeEncoding`,
    :class:`~astroflax.models.lightcurve.LightCurveEncoder` (shared encoder,
    returns one pooled vector per object) and
    :class:`~astroflax.models.lightcurve.TransientClassifier`.

All models are pure functions of ``(params, batch, rng)``: dropout keys are
passed explicitly at call time (``train=True, rng=key``); no RNG state is
stored inside a model.
"""
