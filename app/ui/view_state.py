"""What the viewport may show, decided without any DOM: pure Python for MicroPython and CPython.

The safety rule lives here: the image drawn always belongs to the series and slice the overlay
names. Every image the page holds carries its identity (series, SOP instance, frame); ``drawable``
hands the glue a key only when that identity matches the slice on screen of the current load.
Results come from the engine in its own order (``rank``: status, then pixel count); a result never
replaces one the engine ranks higher. Tested in CPython (tests/test_view_state.py); MicroPython
runs it on the page (no dataclasses, no typing at run time, no numpy).
"""

STATUS_LABELS = {"FULL_RESOLUTION": "FULL"}
MIN_ZOOM, MAX_ZOOM = 0.05, 40.0
#: The memory budget (``?cacheMB``) covers the engine's worker and the page: the worker keeps
#: 1/WORKER_SHARE (frame bytes between stages; of pixels only the latest decode's), the page the rest.
WORKER_SHARE = 8
#: An image evicted from full resolution keeps a copy this much smaller each way (SUBRESOLUTION),
#: so every slice of a long series still shows something while full resolution stays near the cursor.
REDUCE_FACTOR = 4
SUBRESOLUTION_RANK = 6  # ImageQualityStatus.SUBRESOLUTION (app/config.py), the rank's first number


def rank_above(a, b):
    """True when the engine's rank ``a`` (a list of numbers) is above ``b`` (None is lowest)."""
    if b is None:
        return True
    for x, y in zip(a, b):
        if x != y:
            return x > y
    return len(a) > len(b)


def image_key(series, sop, frame, rows, columns):
    """The renderer's key of one result: identity plus the resolution it has."""
    return "%s|%s|%s|%dx%d" % (series, sop, frame, columns, rows)


class Held:
    """One result the page holds for a stack image (the pixels stay in the renderer/JS)."""

    def __init__(self, key, series, sop, frame, rank, status, final, rows, columns, nbytes, info):
        self.key, self.series, self.sop, self.frame = key, series, sop, frame
        self.rank, self.status, self.final = rank, status, final
        self.rows, self.columns, self.nbytes = rows, columns, nbytes
        self.info = info  # the message's other fields (dtype, samples, window, rescale, times)


class Slot:
    """One image of the stack as discovery described it, and what the page holds of it. What the
    images agree on is one dict for all of them (``desc``), read through properties, and what the
    page holds starts as class defaults: a 1000-image stack costs the page's thread 1000 small
    objects (MicroPython: 14 attributes each took ~25 ms and fed its garbage collector)."""

    held = None  # Held, once a result is accepted
    failed = None
    evicted = False  # full resolution given up for the budget: loaded again near the cursor
    first_ms = final_ms = None
    bytes = 0

    def __init__(self, sop, desc):
        self.sop, self.desc = sop, desc
        self.timeline = []  # (kind, ms since the load started, label)

    frame = property(lambda self: self.desc["frame"])
    rows = property(lambda self: self.desc["rows"])
    columns = property(lambda self: self.desc["columns"])
    windows = property(lambda self: self.desc.get("windows") or [])
    slope = property(lambda self: self.desc.get("slope", 1.0))
    intercept = property(lambda self: self.desc.get("intercept", 0.0))
    photometric = property(lambda self: self.desc.get("photometric", "MONOCHROME2"))
    aspect = property(lambda self: self.desc.get("aspect", 1.0) or 1.0)


def slots_of(images):
    """The slots of an "opened" message's images (app/worker.py describe_images): what all images
    share is one dict for all of them; only a field that differs is read per image."""
    same, each = images["same"], images["each"]
    if not each:
        return [Slot(sop, same) for sop in images["sop"]]
    slots = []
    for i, sop in enumerate(images["sop"]):
        desc = dict(same)
        for name, values in each.items():
            desc[name] = values[i]
        slots.append(Slot(sop, desc))
    return slots


class ViewState:
    """The current load (generation), its stack, the slice on screen and how it is displayed."""

    def __init__(self, budget_bytes=1024 << 20):
        self.budget = budget_bytes
        self.copies = 1  # copies of each image's pixels the page keeps (2: a buffer and a GPU texture)
        self.generation = 0
        self.url = ""
        self.reset_series()

    # ---- loads and series ----
    def reset_series(self):
        """Nothing shown: no series, no slice, default display (a new load or a failed one)."""
        self.series = None
        self.info = []
        self.slots = []
        self.index = 0
        self.held_bytes = 0
        self.failed = None
        self.reset_display()

    def reset_display(self):
        self.window = None
        self.invert = False
        self.zoom = 1.0
        self.pan = (0.0, 0.0)

    def begin(self, url):
        """A new load replaces whatever was shown, at once; returns its generation."""
        self.generation += 1
        self.url = url
        self.reset_series()
        return self.generation

    def fail(self, generation, message):
        """The load could not open: nothing of any series stays on screen."""
        if generation != self.generation:
            return False
        self.reset_series()
        self.failed = message
        return True

    def opened(self, message):
        """Discovery's answer for this load; False for a stale one."""
        if message["generation"] != self.generation:
            return False
        self.series = message["series"]
        self.slots = slots_of(message["images"])
        self.info = message.get("info") or []
        self.index = max(0, min(len(self.slots) - 1, message.get("current", 0)))
        self.reset_display()
        windows = self.slots[self.index].windows if self.slots else []
        if windows:
            self.window = (float(windows[0][0]), float(windows[0][1]))
        return True

    # ---- results ----
    def accept(self, m):
        """A refinement message: returns (accepted, keys to drop) - keys the renderer frees."""
        i = m["index"]
        if m["generation"] != self.generation or m["series"] != self.series or not 0 <= i < len(self.slots):
            return False, []
        slot = self.slots[i]
        if m["sop"] != slot.sop or m["frame"] != slot.frame:
            return False, []  # not the image this slot names: never shown
        old = slot.held
        if old is not None and not rank_above(m["rank"], old.rank):
            return False, []
        key = image_key(self.series, m["sop"], m["frame"], m["rows"], m["columns"])
        slot.held = Held(key, self.series, m["sop"], m["frame"], m["rank"], m["status"], m["final"],
                         m["rows"], m["columns"], m["nbytes"], m)
        self.held_bytes += m["nbytes"] - (old.nbytes if old is not None else 0)
        slot.evicted, slot.bytes = False, m.get("bytes", 0)
        t = m.get("t_ms", 0.0)
        if slot.first_ms is None:
            slot.first_ms = t
        if m["final"]:
            slot.final_ms = t
        slot.timeline.append(("final" if m["final"] else m["status"], t,
                              "%dx%d" % (m["columns"], m["rows"])))
        drop = [old.key] if old is not None and old.key != key else []
        if i == self.index and self.window is None and m.get("window"):
            self.window = (float(m["window"][0]), float(m["window"][1]))
        return True, drop

    def image_failed(self, m):
        if m["generation"] != self.generation or not 0 <= m["index"] < len(self.slots):
            return False
        slot = self.slots[m["index"]]
        if m.get("sop") != slot.sop:
            return False
        slot.failed = m["message"]
        slot.timeline.append(("failed", m.get("t_ms", 0.0), m["message"]))
        return True

    def progress(self, m):
        """Requests started and first bytes of this load: m["items"] = [[index, kind, t_ms], ...]."""
        if m["generation"] != self.generation:
            return False
        n = len(self.slots)
        for index, kind, t in m["items"]:
            if 0 <= index < n:
                self.slots[index].timeline.append((kind, t, ""))
        return True

    def page_budget(self):
        """Bytes of pixels (one copy) the page may hold: its share of the budget over its copies."""
        return (self.budget - self.budget // WORKER_SHARE) // self.copies

    def evict(self):
        """Over the page's budget: the images farthest from the one on screen (never it or its
        direct neighbours) give up full resolution for a copy REDUCE_FACTOR smaller each way; only
        if those copies alone exceed the budget are the farthest dropped. Returns [(index, old
        Held, reduced Held or None)]: the glue makes and uploads the copy, frees the old key, and
        tells the engine to forget the image (it is loaded again when the cursor comes near)."""
        done = []
        limit = self.page_budget()
        if self.held_bytes <= limit:
            return done
        for reduce in (True, False):
            for i in self._farthest_first():
                if self.held_bytes <= limit:
                    break
                slot = self.slots[i]
                held = slot.held
                if held is None or (reduce and held.columns <= max(1, slot.columns // REDUCE_FACTOR)):
                    continue
                small = self._reduced(held) if reduce else None
                self.held_bytes -= held.nbytes - (small.nbytes if small else 0)
                done.append((i, held, small))
                slot.held, slot.evicted, slot.final_ms = small, True, None
        return done

    def _farthest_first(self):
        """Slice indices from the farthest from the one on screen to its direct neighbours
        (excluded), without sorting the whole series at every result."""
        lo, hi = 0, len(self.slots) - 1
        while lo < self.index - 1 or hi > self.index + 1:
            if hi - self.index > self.index - lo:
                yield hi
                hi -= 1
            else:
                yield lo
                lo += 1

    def _reduced(self, held):
        """The Held of ``held``'s pixels reduced REDUCE_FACTOR each way, badged SUBRESOLUTION."""
        rows, columns = max(1, held.rows // REDUCE_FACTOR), max(1, held.columns // REDUCE_FACTOR)
        nbytes = held.nbytes // (held.rows * held.columns) * rows * columns
        key = image_key(held.series, held.sop, held.frame, rows, columns)
        return Held(key, held.series, held.sop, held.frame, [SUBRESOLUTION_RANK, rows * columns],
                    "SUBRESOLUTION", False, rows, columns, nbytes, held.info)

    # ---- navigation ----
    def go_to(self, index):
        """Move to a slice; returns the evicted slices near it to load again ([] if none), or
        None when nothing changed."""
        if not self.slots:
            return None
        index = max(0, min(len(self.slots) - 1, index))
        if index == self.index:
            return None
        self.index = index
        near = [i for i in range(max(0, index - 2), min(len(self.slots), index + 3))
                if self.slots[i].evicted]
        for i in near:
            self.slots[i].evicted = False
        return near

    def zoom_by(self, factor, cx=0.0, cy=0.0):
        """Zoom about a point (CSS px from the viewport's centre) that stays where it is."""
        new = max(MIN_ZOOM, min(MAX_ZOOM, self.zoom * factor))
        f = new / self.zoom
        self.pan = (cx - (cx - self.pan[0]) * f, cy - (cy - self.pan[1]) * f)
        self.zoom = new

    def pan_by(self, dx, dy):
        self.pan = (self.pan[0] + dx, self.pan[1] + dy)

    def window_by(self, dcenter, dwidth):
        c, w = self.window or (2048.0, 4096.0)
        self.window = (c + dcenter, max(1.0, w + dwidth))

    # ---- what to draw and say ----
    def current(self):
        return self.slots[self.index] if self.slots else None

    def drawable(self):
        """(key, held) for the slice on screen, only if what is held is that very image."""
        slot = self.current()
        if slot is None or slot.held is None:
            return None
        held = slot.held
        if held.series != self.series or held.sop != slot.sop or held.frame != slot.frame:
            return None
        return held.key, held

    def view(self):
        """The renderer's view (CONTRACT.md) for the slice on screen."""
        slot = self.current()
        c, w = self.window or (2048.0, 4096.0)
        held = slot.held if slot else None
        return {"center": c, "width": w, "slope": slot.slope if slot else 1.0,
                "intercept": slot.intercept if slot else 0.0, "invert": self.invert,
                "monochrome1": bool(slot and slot.photometric == "MONOCHROME1"),
                "zoom": self.zoom, "panX": self.pan[0], "panY": self.pan[1],
                "fullRows": slot.rows if slot else 1, "fullColumns": slot.columns if slot else 1,
                "aspect": slot.aspect if slot else 1.0,
                "smooth": not (held and held.final and self.zoom * 1.0 > 2.5)}

    def badge(self):
        slot = self.current()
        if slot is None:
            return "FAILED" if self.failed else ""
        if slot.held is None:
            return "FAILED" if slot.failed else "LOADING"
        return slot.held.status

    def overlay(self, scale_percent=None):
        """The four corners' text: (top-left, badge, bottom-left, bottom-right)."""
        slot = self.current()
        if slot is None:
            return "", self.badge(), "", ""
        tl = ["Image %d / %d" % (self.index + 1, len(self.slots))]
        if slot.held is not None:
            tl.append("Native %dx%d, showing %dx%d" % (slot.columns, slot.rows,
                                                       slot.held.columns, slot.held.rows))
            if scale_percent is not None:
                tl.append("Displayed at %.0f%%" % scale_percent)
        w = self.window
        bl = ("W %.0f  L %.0f" % (w[1], w[0]) if w else "W -  L -") + (
            "  inverted" if self.invert else "") + "  zoom %.2f" % self.zoom
        br = ["first %.0f ms" % slot.first_ms if slot.first_ms is not None else "first -",
              "final %.0f ms" % slot.final_ms if slot.final_ms is not None else "final -",
              "%.0f KiB received" % (slot.bytes / 1024)]
        return "\n".join(tl), self.badge(), bl, "\n".join(br)

    def summary(self):
        """The status line once a run is over."""
        n = len(self.slots)
        done = sum(1 for s in self.slots if s.final_ms is not None)
        failed = sum(1 for s in self.slots if s.failed)
        reduced = sum(1 for s in self.slots if s.evicted and s.held is not None)
        dropped = sum(1 for s in self.slots if s.evicted and s.held is None)
        text = "%d/%d lossless" % (done, n)
        if failed:
            text += ", %d failed" % failed
        if reduced or dropped:
            kept = ["%d reduced" % reduced] if reduced else []
            kept += ["%d dropped" % dropped] if dropped else []
            text += ", %s to stay within %d MB" % (" and ".join(kept), self.budget >> 20)
        return text


def badge_label(status):
    return STATUS_LABELS.get(status, status)
