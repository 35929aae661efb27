"""The Dependency Descriptor parser (engine/codecs/dd.pyx): random and truncated input never crashes and never
changes the stream's state; descriptors written here (independently, from the AV1 RTP specification's appendix A)
read back field for field, with and without the template structure, custom DTIs, fdiffs and chains."""
from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings, strategies as st

from engine.codecs.dd import DependencyDescriptorReader


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


def expect(s: Structure, f: Frame, read: dict | str) -> None:
    t = s.templates[f.index]
    assert isinstance(read, dict), read
    assert read["frame_number"] == f.number and (read["start_of_frame"], read["end_of_frame"]) == (f.start, f.end)
    assert (read["spatial_id"], read["temporal_id"]) == (t.spatial, t.temporal)
    assert read["dtis"] == (f.dtis if f.dtis is not None else t.dtis)
    assert read["fdiffs"] == (f.fdiffs if f.fdiffs is not None else t.fdiffs)
    assert read["chain_fdiffs"] == (f.chains if f.chains is not None else t.chains)
    all_targets = (1 << s.decode_targets) - 1
    assert read["active_decode_targets"] == (f.active if f.active is not None else all_targets)


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
    for f in frames:
        expect(s, f, reader.read(write(s, f)))
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
