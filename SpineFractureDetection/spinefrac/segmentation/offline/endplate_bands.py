"""Discs found from their endplates (step 3, a second reading of the axis profile).

The dips of the profile are the discs where the disc is darker than the marrow. In elderly and
osteoporotic spines it is not: the marrow is fatty (100-150 HU), the endplates are sclerotic, and
a thin thoracic disc (2-4 mm) lies between two endplates less than a slice apart, so disc and
endplates merge into one band brighter than the bodies. The profile's deep dips are then the
bodies' marrow, and cutting there halves every vertebra. Endplates are cortical bone at any age:
the bands brighter than the marrow around them mark the disc levels in both kinds of spine. A dark
disc lies in its band, between its two endplates; a merged one where the band is brightest.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage, signal

PITCH_RANGE_MM = (12.0, 48.0)  # one body plus one disc, C3 to L5
PITCH_WINDOW_MM = 60.0  # either side: two to five vertebrae, so the pitch follows the spine's regions
PITCH_SAMPLE_MM = 10.0
PITCH_SPREAD = 1.6  # C3 to L5 pitches differ by a factor of 2.5; neighbouring regions' by less
PITCH_MEDIAN_SAMPLES = 5  # a window's harmonic (two pitches, half a pitch) is outvoted by its neighbours
BAND_SIGMA_PITCH = 0.22  # smoothing of the brightness above the marrow: joins a disc's two endplates
BAND_MIN_GAP_PITCH = 0.5
DARK_DISC_REACH_PITCH = 0.3  # a dark disc lies this close to its band's centre ...
DARK_DISC_HU = 15.0  # ... below the marrow by this much, with an endplate this much above it on each side
ENDPLATE_REACH_MM = 8.0  # a disc's endplates sit within this of its centre, a body's further apart
MID_PHASE = (0.3, 0.7)  # a dip this far between two bands lies in a body
INVERTED_SHARE = 0.5
MIN_BANDS_PER_DIP = 0.75
MARROW_BONE_SHARE = 0.7  # measured at the dips: marrow 0.76-1.0 (POPI, lung1), discs 0.0-0.54 (sample CT, neck phantom)


def local_pitch(profile: np.ndarray, step_mm: float) -> np.ndarray:
    """Body-plus-disc length in samples at every profile point: the strongest autocorrelation peak
    of the profile within PITCH_WINDOW_MM, among lags within PITCH_RANGE_MM and within a factor
    PITCH_SPREAD of the whole spine's median pitch (a window's other harmonics fall outside)."""
    half = int(round(PITCH_WINDOW_MM / step_mm))
    low, high = (int(round(mm / step_mm)) for mm in PITCH_RANGE_MM)
    centres = np.arange(0, profile.size, max(int(round(PITCH_SAMPLE_MM / step_mm)), 1))
    correlations = [_autocorrelation(profile[max(c - half, 0):c + half + 1]) for c in centres]
    pitches = np.array([_strongest_lag(correlation, low, high) for correlation in correlations])
    if np.all(np.isnan(pitches)):
        return np.full(profile.size, np.nan)
    typical = float(np.nanmedian(pitches))
    low, high = max(low, int(typical / PITCH_SPREAD)), min(high, int(np.ceil(typical * PITCH_SPREAD)))
    pitches = np.array([_strongest_lag(correlation, low, high) for correlation in correlations])
    known = ~np.isnan(pitches)
    if not known.any():
        return np.full(profile.size, typical)
    voted = ndimage.median_filter(pitches[known], PITCH_MEDIAN_SAMPLES, mode="nearest")
    return np.interp(np.arange(profile.size), centres[known], voted)


def _autocorrelation(values: np.ndarray) -> np.ndarray:
    centred = values - values.mean()
    return np.correlate(centred, centred, "full")[centred.size - 1:]


def _strongest_lag(correlation: np.ndarray, low: int, high: int) -> float:
    if correlation.size <= low or correlation[0] <= 0:
        return np.nan
    lags = signal.find_peaks(correlation[:high + 1])[0]
    lags = lags[lags >= low]
    return float(lags[np.argmax(correlation[lags])]) if lags.size else np.nan


def band_discs(profile: np.ndarray, step_mm: float, cut_below: bool = False, cut_above: bool = False) -> np.ndarray:
    """Profile indices of the discs read from the bright endplate bands (see the module's text).
    Where the spine ends in view (an end not cut_below / cut_above by the image), the last
    endplate's band has no body beyond it: bands within half a pitch of such an end are dropped."""
    pitch = local_pitch(profile, step_mm)
    if np.all(np.isnan(pitch)):
        return np.array([], dtype=int)
    marrow = _running_median(profile, pitch)
    brightness = ndimage.gaussian_filter1d(np.maximum(profile - marrow, 0.0), BAND_SIGMA_PITCH * float(np.median(pitch)))
    bands = _separated_peaks(brightness, BAND_MIN_GAP_PITCH * pitch)
    bands = [band for band in bands if (cut_below or band >= BAND_MIN_GAP_PITCH * pitch[band])
             and (cut_above or profile.size - 1 - band >= BAND_MIN_GAP_PITCH * pitch[band])]
    return np.array([_disc_in_band(profile, marrow, band, DARK_DISC_REACH_PITCH * pitch[band], step_mm)
                     for band in bands], dtype=int)


def _running_median(profile: np.ndarray, pitch: np.ndarray) -> np.ndarray:
    """The marrow's level: the median over one pitch (a body is most of it)."""
    half = (pitch / 2).astype(int)
    return np.array([np.median(profile[max(i - h, 0):i + h + 1]) for i, h in enumerate(half)])


def _separated_peaks(values: np.ndarray, min_gap: np.ndarray) -> list[int]:
    """Local maxima, the highest first, none within its own min_gap of a higher one."""
    kept: list[int] = []
    for peak in sorted(signal.find_peaks(values)[0], key=lambda i: -values[i]):
        if all(abs(peak - other) >= min_gap[peak] for other in kept):
            kept.append(int(peak))
    return sorted(kept)


def _disc_in_band(profile: np.ndarray, marrow: np.ndarray, band: int, reach: float, step_mm: float) -> int:
    """The band's darkest dip below the marrow with a bright endplate within ENDPLATE_REACH_MM on
    each side (a disc darker than the marrow), else the band's centre (a merged disc)."""
    endplate_reach = int(round(ENDPLATE_REACH_MM / step_mm))
    candidates = [dip for dip in signal.argrelmin(profile)[0]
                  if abs(dip - band) <= reach and profile[dip] <= marrow[dip] - DARK_DISC_HU
                  and flanking_endplate_hu(profile, dip, endplate_reach) >= marrow[dip] + DARK_DISC_HU]
    return min(candidates, key=lambda dip: profile[dip]) if candidates else band


def flanking_endplate_hu(profile: np.ndarray, index: int, reach: int) -> float:
    """The darker of the brightest samples within ``reach`` below and above ``index``: the fainter of
    the two endplates around a disc there (-inf where a side is empty)."""
    return min(profile[max(index - reach, 0):index].max(initial=-np.inf),
               profile[index + 1:index + reach + 1].max(initial=-np.inf))


def phase_inverted(profile: np.ndarray, dip_discs: np.ndarray, band_discs: np.ndarray, bone_share: np.ndarray) -> bool:
    """Whether the discs read from the dips lie in the bodies: most of them midway between the
    bands' discs, on bone (a disc is soft tissue; marrow lies inside a cortical ring, which the
    engine's bone mask fills: bone_share is the bone share of the profile's disks), and in troughs
    broader than the bands (of a body plus its disc, the disc with its endplates is the shorter part;
    on 5 mm slices partial volume makes thin discs bone, and a body between two discs is a band)."""
    if band_discs.size < 3 or band_discs.size < MIN_BANDS_PER_DIP * dip_discs.size:
        return False
    slot = np.searchsorted(band_discs, dip_discs)
    inside = (slot > 0) & (slot < band_discs.size)
    if np.count_nonzero(inside) < 3:
        return False
    lower, upper = band_discs[slot[inside] - 1], band_discs[slot[inside]]
    phase = (dip_discs[inside] - lower) / (upper - lower)
    midway = float(np.mean((phase > MID_PHASE[0]) & (phase < MID_PHASE[1])))
    return (midway >= INVERTED_SHARE and float(np.median(bone_share[dip_discs])) >= MARROW_BONE_SHARE
            and _bands_narrower_than_troughs(profile, dip_discs, band_discs))


def _bands_narrower_than_troughs(profile: np.ndarray, dip_discs: np.ndarray, band_discs: np.ndarray) -> bool:
    """Median run lengths on either side of the level halfway between the bands' brightest HU and the
    dips' HU: above it around each band, below it around each dip (a run, not a peak's own width,
    so that noise on a flat body does not make it narrow)."""
    reach = DARK_DISC_REACH_PITCH * float(np.median(np.diff(band_discs)))
    brightest = [_brightest_near(profile, disc, reach) for disc in band_discs]
    half_hu = (float(np.median(profile[brightest])) + float(np.median(profile[dip_discs]))) / 2
    band_width = np.median([_run_length(profile >= half_hu, i) for i in brightest])
    trough_width = np.median([_run_length(profile < half_hu, i) for i in dip_discs])
    return bool(band_width < trough_width)


def _brightest_near(profile: np.ndarray, centre: int, reach: float) -> int:
    low = max(int(centre - reach), 0)
    return low + int(np.argmax(profile[low:int(centre + reach) + 1]))


def _run_length(inside: np.ndarray, index: int) -> int:
    """Length of the run of True in ``inside`` holding ``index`` (0 when it is False there)."""
    if not inside[index]:
        return 0
    outside = np.flatnonzero(~inside)
    before, after = outside[outside < index], outside[outside > index]
    return int((after[0] if after.size else inside.size) - (before[-1] + 1 if before.size else 0))
