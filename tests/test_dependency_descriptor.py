"""The Dependency Descriptor parser and writer (engine/codecs/dd.pyx): random and truncated input never crashes and
never changes the stream's state; descriptors written here (independently, from the AV1 RTP specification's appendix
A) read back field for field, with and without the template structure, custom DTIs, fdiffs and chains; the active
decode targets mask stands until the next one; what write_dd rewrites (frame number, mask) reads back with every
other field as it was; each decode target's subsets (what its subscriber is told is active) follow the DTIs."""
from __future__ import annotations

from dataclasses import dataclass

from hypothesis import assume, given, settings, strategies as st

from engine.codecs.dd import DependencyDescriptorReader

DD_GROWTH = 5   # dd.pxd: write_dd adds at most the extended fields' flags and a 32-target mask


class BitWriter:
    def __init__(self) -> None:
        self.bits: list[int] = []

    def write(self, value: int, n: int) -> None:
        self.bits += [(value >> (n - 1 - i)) & 1 for i in range(n)]

    def ns(self, value: int, n: int) -> None:
        """ns(n) of the specification: values below m = 2^w - n in w - 1 bits, the rest in w."""
        w = n.bit_length()
        m = (1 << w) - n
        if value < m:
            self.write(value, w - 1)
        else:
            self.write((value + m) >> 1, w - 1)
            self.write((value + m) & 1, 1)

    def data(self) -> bytes:
        bits = self.bits + [0] * (-len(self.bits) % 8)
        return bytes(int("".join(map(str, bits[i:i + 8])), 2) for i in range(0, len(bits), 8))


@dataclass
class Template:
    spatial: int
    temporal: int
    dtis: list[int]
    fdiffs: list[int]
    chains: list[int]


@dataclass
class Structure:
    offset: int
    decode_targets: int
    templates: list[Template]
    protected_by: list[int]      # one chain per decode target; empty = no chains
    resolutions: list[tuple[int, int]]

    @property
    def chain_count(self) -> int:
        return max(self.protected_by) + 1 if self.protected_by else 0


@st.composite
def structures(draw) -> Structure:
    spatial_layers = draw(st.integers(1, 4))
    decode_targets = draw(st.integers(1, 32))
    chain_count = draw(st.integers(0, decode_targets))
    protected_by = [draw(st.integers(0, chain_count - 1)) for _ in range(decode_targets)] if chain_count else []
    if protected_by:
        protected_by[-1] = chain_count - 1   # so the structure really has chain_count chains
    templates = []
    for spatial in range(spatial_layers):
        for temporal in range(draw(st.integers(1, 4))):
            for _ in range(draw(st.integers(1, 2))):
                templates.append(Template(spatial, temporal, draw(st.lists(st.integers(0, 3), min_size=decode_targets,
                                                                            max_size=decode_targets)),
                                          draw(st.lists(st.integers(1, 16), max_size=4)),
                                          draw(st.lists(st.integers(0, 15), min_size=chain_count,
                                                        max_size=chain_count))))
    templates = templates[:64]
    resolutions = draw(st.lists(st.tuples(st.integers(1, 65536), st.integers(1, 65536)),
                                min_size=templates[-1].spatial + 1, max_size=templates[-1].spatial + 1)
                       | st.just([]))
    return Structure(draw(st.integers(0, 63)), decode_targets, templates, protected_by, resolutions)


def write_structure(w: BitWriter, s: Structure) -> None:
    w.write(s.offset, 6)
    w.write(s.decode_targets - 1, 5)
    for this, following in zip(s.templates, s.templates[1:] + [None]):
        if following is None:
            w.write(3, 2)
        elif following.spatial != this.spatial:
            w.write(2, 2)
        else:
            w.write(following.temporal - this.temporal, 2)
    for t in s.templates:
        for dti in t.dtis:
            w.write(dti, 2)
    for t in s.templates:
        for fdiff in t.fdiffs:
            w.write(1, 1)
            w.write(fdiff - 1, 4)
        w.write(0, 1)
    w.ns(s.chain_count, s.decode_targets + 1)
    if s.chain_count:
        for chain in s.protected_by:
            w.ns(chain, s.chain_count)
        for t in s.templates:
            for fdiff in t.chains:
                w.write(fdiff, 4)
    w.write(1 if s.resolutions else 0, 1)
    for width, height in s.resolutions:
        w.write(width - 1, 16)
        w.write(height - 1, 16)


@dataclass
class Frame:
    index: int                   # template index within the structure
    number: int
    start: bool = True
    end: bool = True
    attach: bool = False         # carry the structure
    active: int | None = None    # an active decode targets bitmask
    dtis: list[int] | None = None
    fdiffs: list[int] | None = None
    chains: list[int] | None = None


def write(s: Structure, f: Frame) -> bytes:
    w = BitWriter()
    w.write(f.start, 1)
    w.write(f.end, 1)
    w.write((f.index + s.offset) % 64, 6)
    w.write(f.number, 16)
    if f.attach or f.active is not None or f.dtis or f.fdiffs is not None or f.chains is not None:
        w.write(f.attach, 1)
        w.write(f.active is not None, 1)
        w.write(f.dtis is not None, 1)
        w.write(f.fdiffs is not None, 1)
        w.write(f.chains is not None, 1)
        if f.attach:
            write_structure(w, s)
        if f.active is not None:
            w.write(f.active, s.decode_targets)
        for dti in f.dtis or ():
            w.write(dti, 2)
        if f.fdiffs is not None:
            for fdiff in f.fdiffs:
                size = ((fdiff - 1).bit_length() + 3) // 4 or 1
                w.write(size, 2)
                w.write(fdiff - 1, 4 * size)
            w.write(0, 2)
        for fdiff in f.chains or ():
            w.write(fdiff, 8)
    return w.data()


def expect(s: Structure, f: Frame, read: dict | str, active: int | None = None) -> None:
    """`read` is `f` of `s`; `active`: the mask in force before it (None: all targets)."""
    t = s.templates[f.index]
    assert isinstance(read, dict), read
    assert read["frame_number"] == f.number and (read["start_of_frame"], read["end_of_frame"]) == (f.start, f.end)
    assert (read["spatial_id"], read["temporal_id"]) == (t.spatial, t.temporal)
    assert read["dtis"] == (f.dtis if f.dtis is not None else t.dtis)
    assert read["fdiffs"] == (f.fdiffs if f.fdiffs is not None else t.fdiffs)
    assert read["chain_fdiffs"] == (f.chains if f.chains is not None else t.chains)
    if f.active is not None:
        active = f.active
    elif f.attach or active is None:
        active = (1 << s.decode_targets) - 1   # a structure makes every target active
    assert read["active_decode_targets"] == active


@st.composite
def streams(draw) -> tuple[Structure, list[Frame]]:
    s = draw(structures())
    frames = [Frame(0, draw(st.integers(0, 65535)), attach=True)]
    for _ in range(draw(st.integers(0, 6))):
        custom = draw(st.booleans())
        frames.append(Frame(
            draw(st.integers(0, len(s.templates) - 1)), draw(st.integers(0, 65535)), draw(st.booleans()),
            draw(st.booleans()),
            active=draw(st.none() | st.integers(0, (1 << s.decode_targets) - 1)),
            dtis=draw(st.lists(st.integers(0, 3), min_size=s.decode_targets, max_size=s.decode_targets))
            if custom else None,
            fdiffs=draw(st.none() | st.lists(st.integers(1, 4096), max_size=8)),
            chains=draw(st.lists(st.integers(0, 255), min_size=s.chain_count, max_size=s.chain_count))
            if custom and s.chain_count else None))
    return s, frames


@settings(max_examples=300, deadline=None)
@given(streams())
def test_written_descriptors_read_back(stream: tuple[Structure, list[Frame]]) -> None:
    s, frames = stream
    reader = DependencyDescriptorReader()
    active = None
    for f in frames:
        read = reader.read(write(s, f))
        expect(s, f, read, active)
        active = read["active_decode_targets"]
    info = reader.structure_info
    assert info["structure_id"] == s.offset and info["decode_targets"] == s.decode_targets
    assert info["templates"] == len(s.templates) and info["chains"] == s.chain_count
    assert info["protected_by"] == s.protected_by and info["resolutions"] == s.resolutions
    assert info["max_spatial_id"] == s.templates[-1].spatial


@settings(max_examples=200, deadline=None)
@given(structures(), st.data())
def test_truncated_descriptors_are_refused_and_leave_the_state_alone(s: Structure, data) -> None:
    keyframe = write(s, Frame(0, 7, attach=True))
    fresh = DependencyDescriptorReader()
    for cut in range(len(keyframe)):
        assert fresh.read(keyframe[:cut]) in ("malformed", "no structure")
    assert fresh.structure_info is None
    reader = DependencyDescriptorReader()
    reader.read(keyframe)
    before = reader.structure_info
    other = data.draw(structures())
    attached = write(other, Frame(0, 8, attach=True))
    for cut in range(4, len(attached)):
        assert reader.read(attached[:cut]) == "malformed"
    assert reader.structure_info == before


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=96), st.binary(max_size=96))
def test_random_bytes_never_crash(first: bytes, second: bytes) -> None:
    reader = DependencyDescriptorReader()
    for data in (first, second, first):
        result = reader.read(data)
        assert result in ("malformed", "no structure") or isinstance(result, dict)


def test_a_frame_without_a_structure_or_with_an_unknown_template_waits_for_a_keyframe() -> None:
    s = Structure(5, 1, [Template(0, 0, [3], [], [])], [], [])
    reader = DependencyDescriptorReader()
    assert reader.read(write(s, Frame(0, 1))) == "no structure"
    expect(s, Frame(0, 2, attach=True), reader.read(write(s, Frame(0, 2, attach=True))))
    assert reader.read(bytes([(6 + 5) % 64, 0, 3])) == "no structure"   # template index 6 of 1


def test_l3t3_full_structure_reads_its_layers() -> None:
    """Chrome's L3T3: nine decode targets, templates per (spatial, temporal), three chains (one per spatial layer)."""
    templates = [Template(spatial, temporal, [3] * 9, [1] if temporal else [], [1, 1, 1])
                 for spatial in range(3) for temporal in range(3)]
    s = Structure(0, 9, templates, [0, 0, 0, 1, 1, 1, 2, 2, 2], [(320, 180), (640, 360), (1280, 720)])
    reader = DependencyDescriptorReader()
    expect(s, Frame(0, 100, attach=True), reader.read(write(s, Frame(0, 100, attach=True))))
    expect(s, Frame(8, 101), reader.read(write(s, Frame(8, 101))))
    assert reader.structure_info["max_temporal_id"] == 2


@settings(max_examples=200, deadline=None)
@given(streams(), st.data())
def test_rewritten_descriptors_read_back_with_the_new_number_and_mask(stream: tuple[Structure, list[Frame]],
                                                                       data) -> None:
    """write_dd: each frame written back with another frame number and, or not, another mask reads as the original
    but for those two; it is never more than DD_GROWTH bytes longer."""
    s, frames = stream
    assume(len(write(s, frames[0])) <= 255)   # a structure an extension element holds
    reader, rewritten = DependencyDescriptorReader(), DependencyDescriptorReader()
    for f in frames:
        value = write(s, f)
        original = reader.read(value)
        if len(value) > 255:
            continue   # more than an extension element holds: it never reaches write_dd
        number = data.draw(st.integers(0, 65535))
        mask = data.draw(st.none() | st.integers(0, (1 << s.decode_targets) - 1))
        out = rewritten.rewrite(value, number, mask)
        assert isinstance(out, bytes) and len(out) <= len(value) + DD_GROWTH
        read = DependencyDescriptorReader()
        read.read(write(s, frames[0]))   # a subscriber that has the structure
        again = read.read(out)
        expected = dict(original, frame_number=number)
        if mask is not None:
            expected["active_decode_targets"] = mask
        elif not f.attach and f.active is None:
            expected["active_decode_targets"] = again["active_decode_targets"]   # whatever it held before
        assert again == expected


def test_a_mask_is_added_to_a_descriptor_of_the_mandatory_fields_only() -> None:
    s = Structure(3, 4, [Template(0, 0, [3, 3, 3, 3], [], [])], [], [])
    reader = DependencyDescriptorReader()
    reader.read(write(s, Frame(0, 1, attach=True)))
    out = reader.rewrite(write(s, Frame(0, 2)), 9, 0b0101)
    assert len(out) == 5 and out[3] == 0x40 | 0b0101 >> 1 and out[4] >> 7 == 1   # flags 01000, mask 0101
    read = DependencyDescriptorReader()
    read.read(write(s, Frame(0, 1, attach=True)))
    assert read.read(out)["active_decode_targets"] == 0b0101 and read.read(write(s, Frame(0, 3))) \
        ["active_decode_targets"] == 0b0101   # it stands for the next frames


def test_decode_target_subsets_follow_the_dtis() -> None:
    """A target's subsets: the targets whose frames are all among its own (present in no template it lacks)."""
    # L2T2 full SVC: targets S0T0, S0T1, S1T0, S1T1; template (s, t) serves the targets at or above it in both ids
    full = [Template(sp, tp, [int(ds >= sp and dt >= tp) * 3 for ds in range(2) for dt in range(2)], [], [])
            for sp in range(2) for tp in range(2)]
    reader = DependencyDescriptorReader()
    read = reader.read(write(Structure(0, 4, full, [], []), Frame(0, 1, attach=True)))
    assert read["decode_target_subsets"] == [0b0001, 0b0011, 0b0101, 0b1111]
    # L2T1_KEY: the keyframe's S0 serves both targets, S0 and S1 deltas only their own
    key = [Template(0, 0, [3, 3], [], []), Template(0, 0, [3, 0], [1], []), Template(1, 0, [0, 3], [1], [])]
    read = reader.read(write(Structure(0, 2, key, [], []), Frame(0, 2, attach=True)))
    assert read["decode_target_subsets"] == [0b01, 0b10]
