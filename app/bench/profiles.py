"""What the bench measures: network profiles, retrieve modes and the network floor of a render."""

from __future__ import annotations

__all__ = ["PROFILES", "PROFILE_LABELS", "MODES", "STACK_PRESETS", "DEFAULT_PROFILES", "floor_ms", "timeout_ms"]

# Bytes per second down, up, latency in ms (what Network.emulateNetworkConditions takes).
PROFILES: dict[str, dict[str, float] | None] = {
    "none": None,
    # Cornerstone3D's published "4g": 30 Mbit/s down, 5 Mbit/s up, 10 ms.
    "seed4g": {"down": 3_750_000, "up": 625_000, "latency": 10.0},
    # Chrome DevTools "Fast 4G": 9 Mbit/s * 0.9, 1.5 Mbit/s * 0.9, 60 ms * 2.75.
    "fast4g": {"down": 1_012_500, "up": 168_750, "latency": 165.0},
    # Chrome DevTools "Slow 4G" (the former "Fast 3G"): 1.6 Mbit/s * 0.9, 750 kbit/s * 0.9, 150 ms * 3.75.
    "slow4g": {"down": 180_000, "up": 84_375, "latency": 562.5},
}
PROFILE_LABELS = {"none": "loopback (no emulation)", "seed4g": "4g 30/5 Mbit/s 10 ms",
                  "fast4g": "Fast 4G 8.1/1.35 Mbit/s 165 ms", "slow4g": "Slow 4G 1.44/0.675 Mbit/s 563 ms"}

# preset name -> (label, frames path of the final encoding, frames path of a first-render alternate)
MODES: dict[str, tuple[str, str, str | None]] = {
    "jls": ("JLS", "jls", None),
    "jlsReduced": ("JLS Reduced", "jls", "jlsThumbnail"),
    "htj2k": ("HTJ2K streaming", "frames", None),
    "htj2kByteRange": ("HTJ2K Byte Range", "frames", None),
    "nonProgressive": ("HTJ2K non-progressive", "frames", None),
}
STACK_PRESETS = ("interleavedStack", "htj2k")
DEFAULT_PROFILES = ("seed4g", "fast4g")


def floor_ms(profile: str, nbytes: float, decode_ms: float) -> float:
    """The fastest a render can be: latency + bytes it needed / bandwidth + its own decode."""
    net = PROFILES[profile]
    if net is None:
        return decode_ms
    return net["latency"] + nbytes / net["down"] * 1000.0 + decode_ms


def timeout_ms(profile: str, nbytes: int) -> float:
    """A generous wait for one load under a profile: slow profiles move megabytes for minutes, and
    a large stack's decodes on a busy machine (``--cpu-load``) take about a second per megabyte."""
    decode = nbytes / 1000
    net = PROFILES[profile]
    if net is None:
        return 120_000 + decode
    return 120_000 + decode + 4 * (nbytes / net["down"] * 1000 + 20 * net["latency"])
