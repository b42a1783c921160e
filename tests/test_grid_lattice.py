"""Grid-phase detection, the DCT-lattice fit, header tables and the hybrid rule, on images made here."""

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter, JpegPresets

from q1net.data.images import read_image
from q1net.data.jpeg import jpeg_encode, jpeg_roundtrip
from q1net.data.sources import SyntheticSource
from q1net.forensics.clipping import block_at, clipped_samples
from q1net.forensics.dct import PIXEL_MAX, dct_matrix, sliding_dct
from q1net.forensics.lattice import TIE_NATS, LatticeFit, coarser_lattice, log_no_lattice, same_values
from q1net.forensics.ops import FAR
from q1net.forensics.quant_tables import (
    IJG_LUMA_TABLES,
    affine_completion,
    ijg_equivalent_quality,
    ijg_luma_table,
    other_encoder_tables,
    possible_equivalents,
    scaled_equivalents,
)
from q1net.nets.q1net import create_model
from q1net.predictor.inference import Predictor, undetermined_reason
from q1net.predictor.program import Q1Program, cut_regions
from q1net.predictor.rules import AGREE_LEVELS, CHOICE_NATS, EARLIER_LEVELS, METHOD_CODES, MIN_SUPPORT, Vote, combine


@pytest.fixture(scope="module")
def scene() -> np.ndarray:
    """A 256x256 dead-leaves picture with film-grain noise: edges, flats and fine texture."""
    clean = SyntheticSource(count=1, size=256, seed=5).load(0).astype(np.float32)
    grain = np.random.default_rng(5).normal(0, 3, clean.shape)
    return np.clip(np.round(clean + grain), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def program() -> Q1Program:
    """The grid detector and the lattice need no trained network: a tiny random one fills the program's slot."""
    torch.manual_seed(0)
    return Q1Program(create_model("q1net_baseline", k=2), tau=90.0)


@torch.no_grad()
def locate(program: Q1Program, pixels: np.ndarray):
    regions, rows, cols = (torch.from_numpy(a) for a in cut_regions(pixels))
    return program.locate(regions, rows, cols)


def decoded_header(data: bytes) -> np.ndarray:
    return read_image(io.BytesIO(data)).jpeg_luma_table


@pytest.mark.parametrize("quality", [1, 10, 37, 50, 75, 95, 99, 100])
def test_ijg_tables_are_libjpeg_turbos(scene, quality):
    table = decoded_header(jpeg_encode(scene, quality))
    np.testing.assert_array_equal(table, ijg_luma_table(quality))
    assert ijg_equivalent_quality(table) == quality


def test_ijg_equivalent_quality_of_other_tables():
    assert len({tuple(t) for t in IJG_LUMA_TABLES}) == 100  # every level has its own luma table
    assert ijg_equivalent_quality(ijg_luma_table(60) * 1.005) == 60  # nearest in log-step (one level is ~2.5% here)
    known = np.zeros(64, bool)
    known[:10] = True
    assert ijg_equivalent_quality(np.where(known, ijg_luma_table(80), 255), known) == 80  # unknown steps are ignored
    with pytest.raises(ValueError):
        ijg_equivalent_quality(np.ones(64), np.zeros(64, bool))


def test_a_table_known_whole_has_exactly_its_own_equivalent():
    """Every completion of a fully known table is the table itself: one equivalent, reached by 100 completions (an
    index_put of the near ones' flags once let a far completion's False overwrite it, leaving the range 1..100)."""
    luma, _ = other_encoder_tables("flat", 70)
    estimate, possible = possible_equivalents(
        torch.log(torch.from_numpy(luma).float()), torch.ones(64, dtype=torch.bool), torch.full((64,), math.inf)
    )
    assert int(estimate) + 1 == ijg_equivalent_quality(luma) and torch.nonzero(possible).flatten().tolist() == [int(estimate)]


@pytest.mark.parametrize(
    ("family", "quality"), [("annex_k", 39), ("annex_k", 43), ("annex_k", 52), ("annex_k", 58), ("ijg", 50), ("ijg", 80)]
)
def test_the_scale_the_known_steps_allow_brackets_the_whole_tables_equivalent(family, quality):
    """Annex K scaled by another law reads, on its low frequencies, as an IJG table a level or two above the whole
    table's equivalent (39: 32 for 31; 58: 67 for 65); Table K.1 at every scale its known steps allow reaches it."""
    luma = ijg_luma_table(quality) if family == "ijg" else other_encoder_tables(family, quality)[0]
    u, v = np.divmod(np.arange(64), 8)
    known = torch.from_numpy(u + v <= 4)
    low, high = scaled_equivalents(torch.from_numpy(luma).float(), known, torch.full((64,), math.inf))
    truth = ijg_equivalent_quality(luma)
    assert int(low) + 1 <= truth <= int(high) + 1 and int(high) - int(low) <= 3


@pytest.mark.parametrize(("family", "quality"), [("flat", 22), ("flat", 40), ("flat", 60), ("annex_k", 40), ("annex_k", 60)])
def test_unknown_high_frequencies_are_completed_by_the_tables_own_flatness(family, quality):
    """Pixels rarely pin down the high-frequency steps; a camera's flatter table completed in IJG's shape reads many
    levels low. Completed by the affine fit of its known steps to Table K.1 it reads right, and the range spans both."""
    luma, _ = other_encoder_tables(family, quality)
    u, v = np.divmod(np.arange(64), 8)
    known = torch.from_numpy(u + v <= 4)
    log_steps, no_ceiling = torch.log(torch.from_numpy(luma).float()), torch.full((64,), math.inf)
    estimate, possible = possible_equivalents(log_steps, known, no_ceiling)
    truth = ijg_equivalent_quality(luma)
    assert abs(int(estimate) + 1 - truth) <= 1 and bool(possible[truth - 1])
    around = ijg_equivalent_quality(luma, known.numpy())  # the known steps' own equivalent, and its table's shape
    ijg_shaped = ijg_equivalent_quality(np.where(known.numpy(), luma, ijg_luma_table(around)))
    assert (truth - ijg_shaped >= 8) == (family == "flat")  # why: the flat tables' IJG-shaped completion is far off
    few = torch.from_numpy(u + v <= 1)  # 3 known steps: too few to fit a flatness, the unknown ones come from the fallback
    fallback = torch.log(torch.from_numpy(ijg_luma_table(50)).float())
    assert torch.equal(affine_completion(log_steps, few, no_ceiling, fallback)[~few], fallback[~few])
    raster = torch.log(torch.arange(64.0) // 2 + 3)  # steps rising in raster order follow no Table K.1 shape
    assert torch.equal(affine_completion(raster, known, no_ceiling, fallback)[~known], fallback[~known])


@pytest.mark.parametrize(("quality", "dy", "dx"), [(20, 3, 5), (75, 7, 1), (95, 0, 6), (100, 5, 0)])
def test_grid_phase_of_shifted_crops(program, scene, quality, dy, dx):
    phase, fit, _, found = locate(program, jpeg_roundtrip(scene, quality)[dy:, dx:])
    assert bool(phase.sure) and found and (int(phase.dy), int(phase.dx)) == ((8 - dy) % 8, (8 - dx) % 8), phase
    assert int(fit.quality) == quality and bool(fit.strong)


def test_no_grid_in_an_image_never_coded_or_resized(program, scene):
    for pixels in (scene, np.asarray(Image.fromarray(jpeg_roundtrip(scene, 50)).resize((200, 200), Image.BICUBIC))):
        phase, fit, _, found = locate(program, pixels)
        assert not bool(phase.sure) and not bool(fit.strong) and not found


@pytest.mark.parametrize("quality", [3, 24, 37, 61, 88, 97, 100])
def test_lattice_finds_the_ijg_quality(program, scene, quality):
    _, fit, _, _ = locate(program, jpeg_roundtrip(scene, quality)[2:, 3:])
    assert int(fit.quality) == quality and bool(fit.strong) and bool(fit.ijg) and bool(fit.plausible[quality - 1])
    assert int(fit.quality_low) <= quality <= int(fit.quality_high)


@pytest.mark.parametrize("quality", [8, 45, 92])
def test_lattice_reads_a_grayscale_jpeg(program, scene, quality):
    data = io.BytesIO()
    Image.fromarray(scene).convert("L").save(data, format="JPEG", quality=quality)
    _, fit, _, _ = locate(program, read_image(data).pixels)  # gray, repeated into R, G and B
    assert int(fit.quality) == quality and bool(fit.strong) and bool(fit.ijg)


@pytest.mark.parametrize(
    "coded",
    [lambda s, q: jpeg_roundtrip(s, q)[5:, 2:], lambda s, q: jpeg_roundtrip(jpeg_roundtrip(s, q), 90)],
    ids=["shifted", "recompressed-at-90"],
)
@pytest.mark.parametrize("quality", [1, 6, 30, 52, 77, 91, 98, 100])
def test_screening_gives_the_answer_scoring_every_table_gives(program, scene, coded, quality):
    """The lattice scores every table on the most textured blocks and only the best few on all: the same best and plausible set."""
    regions, rows, cols = (torch.from_numpy(a) for a in cut_regions(coded(scene, quality)))
    lattice = program.lattice
    captured = {}
    hook = lattice.register_forward_hook(lambda module, args, output: captured.update(args=args))
    _, fit, _, _ = program.locate(regions, rows, cols)
    hook.remove()
    c, usable, clipped = captured["args"]
    same_ac = same_values(c[:, 1:].float())
    ac, dc = lattice.weights(c.float(), usable, same_ac)
    scale = lattice.scales(c.float(), ac)
    every = lattice.table_log_likelihoods(lattice.tables, c.float(), scale, log_no_lattice(c.float(), scale), ac, dc)
    every = every + lattice.declipped_log_ratios(c.float(), clipped, lattice.tables, same_ac)[0]
    best = int(torch.argmax(every))
    assert int(torch.argmax(fit.tables)) == best
    scored = fit.tables > -FAR  # the rest were screened out
    assert torch.equal((fit.tables >= fit.tables[best] - TIE_NATS)[scored], (every >= every[best] - TIE_NATS)[scored])
    torch.testing.assert_close(fit.tables[scored], every[scored], rtol=1e-5, atol=1e-2)
    if bool(fit.ijg):
        assert int(fit.quality) == best + 1


def test_sliding_dct_gives_every_offsets_block_dct():
    window = torch.from_numpy(np.random.default_rng(7).uniform(-128, 127, (23, 23)).astype(np.float32))
    sliding = sliding_dct(16)
    coefficients = (sliding @ window @ sliding.T).reshape(8, 16, 8, 16)  # (k, y, l, x)
    d = torch.from_numpy(dct_matrix())
    for y, x in ((0, 0), (3, 11), (8, 1), (15, 15)):
        torch.testing.assert_close(coefficients[:, y, :, x], d @ window[y : y + 8, x : x + 8] @ d.T, rtol=0, atol=1e-3)


@pytest.mark.parametrize(("height", "width"), [(24, 24), (31, 40), (40, 33)])
def test_clipped_samples_match_a_block_by_block_check(height, width):
    rng = np.random.default_rng(height * width)
    levels = np.array([0, 1, 128, 254, 255], np.uint8)
    pixels = rng.choice(levels, size=(height, width, 3), p=[0.002, 0.3, 0.396, 0.3, 0.002])
    regions, _, _ = cut_regions(pixels)
    for dy in range(8):
        for dx in range(8):
            _, high, low = clipped_samples(block_at(torch.from_numpy(regions), torch.tensor(dy), torch.tensor(dx)))
            for r in range(0, len(regions), 37):
                block = regions[r, :, dy : dy + 8, dx : dx + 8]
                assert torch.equal(high[r], torch.from_numpy((block == PIXEL_MAX).any(axis=0)))
                assert torch.equal(low[r], torch.from_numpy((block == 0).any(axis=0)))


def test_lattice_is_weak_without_jpeg_and_absent_without_evidence(program, scene):
    _, fit, _, _ = locate(program, scene)
    assert bool(fit.found) and not bool(fit.strong)
    _, flat, _, found = locate(program, jpeg_roundtrip(np.full((128, 128, 3), 130, np.uint8), 80))
    assert not bool(flat.found) and not bool(flat.strong) and not found  # one solid colour is one DC observation, no AC evidence


def test_lattice_estimates_a_custom_table(program, scene):
    steps = np.clip(np.arange(64) // 2 + 3, 1, 255)  # no IJG quality has this table
    data = io.BytesIO()
    Image.fromarray(scene).save(data, format="JPEG", qtables=[steps.tolist(), steps.tolist()], subsampling=0)
    decoded = read_image(data)
    np.testing.assert_array_equal(decoded.jpeg_luma_table, steps)
    _, fit, _, found = locate(program, decoded.pixels)
    known = fit.known.numpy()
    assert known.sum() >= 20 and found
    np.testing.assert_array_equal(fit.steps.numpy()[known], steps[known])
    truth, known_only = ijg_equivalent_quality(steps), ijg_equivalent_quality(steps, known)
    # the unknown steps are completed under the ceilings the non-zero coefficients set: no worse than the known ones alone
    assert not bool(fit.ijg) and abs(int(fit.quality) - truth) <= abs(known_only - truth)
    assert int(fit.quality_low) <= truth <= int(fit.quality_high)


def test_pillow_preset_is_read_as_its_ijg_equivalent(program, scene):
    data = jpeg_encode(scene, "web_high")
    header = decoded_header(data)
    np.testing.assert_array_equal(header, np.array(JpegPresets.presets["web_high"]["quantization"][0]))
    _, fit, _, _ = locate(program, read_image(io.BytesIO(data)).pixels)
    truth = ijg_equivalent_quality(header)  # over all 64 steps; the pixels pin down only a third of them here
    assert not bool(fit.ijg) and int(fit.quality_low) <= truth <= int(fit.quality_high) and abs(int(fit.quality) - truth) <= 4


def test_double_coding_leaves_a_double_lattice(program, scene):
    single = [float(locate(program, jpeg_roundtrip(scene, q))[1].double_gain) for q in (30, 60, 75, 90, 95)]
    assert max(single) == 0.0
    _, fit, _, _ = locate(program, jpeg_roundtrip(jpeg_roundtrip(scene, 75), 90))
    assert float(fit.double_gain) > 1.0 and abs(int(fit.first_quality) - 75) <= 1
    result = Predictor.from_pretrained().predict(jpeg_roundtrip(jpeg_roundtrip(scene, 75), 90))
    assert result.recompressed and result.quality_low <= 75 <= result.quality_high and abs(result.quality - 75) <= 2


def t(value) -> torch.Tensor:
    return torch.tensor(value)


def fit_of(
    quality: int, strength: float = 50.0, plausible: tuple[int, ...] | None = None, ijg: bool = True, double=None, table: int | None = None
) -> LatticeFit:
    """A LatticeFit as the verifier would return it (double: (first quality, gain); table: the finer IJG table whose
    lattice the steps are whole multiples of)."""
    allowed = torch.zeros(100, dtype=torch.bool)
    for q in plausible or (quality,):
        allowed[q - 1] = True
    first = torch.zeros(100, dtype=torch.bool)
    first_quality, gain = double or (1, 0.0)
    first[first_quality - 1] = True
    return LatticeFit(
        found=t(True),
        quality=t(float(quality)),
        quality_low=t(float(min(plausible or (quality,)))),
        quality_high=t(float(max(plausible or (quality,)))),
        strength=t(strength),
        ijg=t(ijg),
        misfit=t(0.0),
        evidence=t(200.0),
        plausible=allowed,
        tables=torch.zeros(100),
        steps=torch.ones(64),
        known=torch.zeros(64, dtype=torch.bool),
        first_quality=t(float(first_quality)),
        first_plausible=first,
        double_gain=t(gain),
        single_low=t(float(min(plausible or (quality,)))),
        scaled_low=t(float(quality)),
        scaled_high=t(float(quality)),
        off_table=t(False),
        steps_ijg=t(ijg),
        table_quality=t(float(table or quality)),
        sublattice=t(table is not None),
    )


def vote_of(quality: float, low: float | None = None, high: float | None = None, support: float = 0.8, fallback: bool = False) -> Vote:
    return Vote(
        t(quality), t(low if low is not None else quality - 1), t(high if high is not None else quality + 1), t(97.0),
        torch.ones(4, dtype=torch.bool), torch.ones(4, dtype=torch.bool), t(fallback), t(support),
    )  # fmt: skip


def answer(cnn: Vote, fit: LatticeFit, found: bool = True, method: str = "hybrid") -> tuple:
    verdict = combine(cnn, fit, t(found), method)
    rounded = (round(float(value), 4) for value in (verdict.quality, verdict.low, verdict.high, verdict.method))
    return (*rounded, bool(verdict.recompressed), bool(verdict.determined))


def test_hybrid_rule():
    assert answer(vote_of(41.3), fit_of(40)) == (40.0, 40.0, 40.0, 1.0, False, True)  # a strong lattice answers
    # weak: the CNN answers, undetermined (the lattice found evidence and no table), its range spans both readings
    assert answer(vote_of(41.3), fit_of(40, strength=0.1)) == (41.3, 40.0, 42.3, 0.0, False, False)
    no_lattice = fit_of(40, strength=0.1)._replace(found=t(False))
    assert answer(vote_of(41.3), no_lattice) == (41.3, 40.3, 42.3, 0.0, False, True)  # no lattice evidence: the CNN alone
    assert answer(vote_of(41.3), fit_of(40, strength=0.1), found=False)[5] is False  # no grid found: not determined
    assert answer(vote_of(95.2), fit_of(96, plausible=(93, 94, 95, 96)))[:3] == (95.0, 93.0, 96.0)  # the CNN picks among ties
    assert answer(vote_of(50.0), fit_of(50, plausible=tuple(range(20, 90))))[5] is False  # a wide range is not determined
    low = 90 - AGREE_LEVELS - 5
    assert answer(vote_of(low), fit_of(90)) == (low, low - 1, low + 1, 0.0, True, True)  # the CNN shows an earlier, lower coding
    assert answer(vote_of(low, support=0.05), fit_of(90))[:5] == (90.0, 90.0, 90.0, 1.0, False)  # unless few blocks voted
    assert answer(vote_of(76.0), fit_of(90, double=(75, 3.0)))[:5] == (
        75.0,
        75.0,
        77.0,
        1.0,
        True,
    )  # two lattices: the first (range: and the CNN's)
    other = fit_of(76, ijg=False, plausible=(75, 76, 77))
    # another encoder's table: its equivalent, no flag; the range reaches the CNN's reading (unknown steps)
    assert answer(vote_of(70.0), other)[:5] == (76.0, 70.0, 77.0, 1.0, False)
    assert answer(vote_of(41.3), fit_of(40), method="cnn")[:4] == (41.3, 40.3, 42.3, 0.0)
    assert answer(vote_of(70.0), fit_of(40), method="lattice")[:4] == (40.0, 40.0, 40.0, 1.0)


def test_a_cnn_well_under_an_ijg_lattice_leaves_the_answer_undetermined_down_to_its_voters():
    """Coded at 85, then at 90: the lattice reads the last coding (90), the CNN 83 over voters 62..94, too near to
    flag two codings. With MIN_SUPPORT of the sampled blocks voting, the lattice still answers, undetermined, its range
    down to the voters and not above 90."""
    assert answer(vote_of(90 - EARLIER_LEVELS, 62.0, 94.0), fit_of(90)) == (90.0, 62.0, 90.0, 1.0, False, False)
    assert answer(vote_of(90 - EARLIER_LEVELS + 0.5, 62.0, 94.0), fit_of(90)) == (90.0, 90.0, 90.0, 1.0, False, True)
    assert answer(vote_of(83.0, 62.0, 94.0, support=MIN_SUPPORT), fit_of(90))[5] is False
    assert answer(vote_of(83.0, 62.0, 94.0, support=MIN_SUPPORT - 0.05), fit_of(90))[5] is True  # too few blocks voting
    fields = {"blocks_informative": 200, "grid_sure": 1, "fallback": 0, "method": METHOD_CODES["lattice"], "recompressed": 0}
    fields |= {"blocks_used": 200, "blocks_sampled": 256}
    reason = undetermined_reason(fields | {"lattice_ijg": 1, "quality": 90.0, "cnn_quality": 83.2}, 62, 90)
    assert reason.startswith("undetermined: the last coding's table is quality 90, the network reads about 83")
    assert undetermined_reason(fields | {"lattice_ijg": 1, "quality": 40.0, "cnn_quality": 39.0}, 30, 45) == (
        "undetermined: the pixels allow 30..45"
    )


def test_the_cnn_chooses_only_among_tables_tied_with_the_best():
    """A table within the plausible range but clearly less likely than the best does not answer because the CNN is
    nearer to it (enlarged photos at 46 read 47, 0.8-2.1 nats under 46); among tables as good as tied it does."""
    tables = torch.full((100,), -FAR)
    tables[45], tables[46] = -1000.0, -1000.0 - 2 * CHOICE_NATS  # quality 46 best, 47 less likely, both plausible
    fit = fit_of(46, plausible=(46, 47))._replace(tables=tables)
    assert answer(vote_of(47.3), fit)[:4] == (46.0, 46.0, 47.0, 1.0)  # the range is still both
    tables[46] = -1000.0 - CHOICE_NATS / 2
    assert answer(vote_of(47.3), fit._replace(tables=tables))[:4] == (47.0, 46.0, 47.0, 1.0)


def test_a_cnn_far_under_an_ijg_lattice_flags_only_when_no_single_table_explains_both():
    """A coarse camera table (steps 211, 175, 167) sits near IJG 35's lattice (23, 16, 14): the per-frequency steps,
    no IJG table's, read about 3 as one coding, and the CNN agrees: one coding, the CNN's answer, no flag. Steps that
    are an IJG table's are a first IJG coding under the finer one: the flag stands."""
    low = 90 - AGREE_LEVELS - 5
    coarse_camera_table = fit_of(90)._replace(single_low=t(float(low - 3)), steps_ijg=t(False))
    assert answer(vote_of(low), coarse_camera_table) == (low, low - 1, low + 1, 0.0, False, True)
    first_ijg_coding = coarse_camera_table._replace(steps_ijg=t(True))
    assert answer(vote_of(low), first_ijg_coding)[4] is True
    far_below_the_steps = coarse_camera_table._replace(single_low=t(float(low + AGREE_LEVELS + 5)))
    assert answer(vote_of(low), far_below_the_steps)[4] is True


def test_steps_of_a_first_ijg_coding_seen_through_the_second_are_an_ijg_tables(program):
    """A first IJG coding's steps read through a finer second coding are multiples of the second's steps near the
    first's (80, 60 at quality 10 under 70's 10, 7: read 80, 63); a coarse camera table's are no IJG table's."""
    first, last = (torch.from_numpy(ijg_luma_table(q)).float() for q in (10, 70))
    known = torch.zeros(64, dtype=torch.bool)
    known[[0, 1, 8, 9]] = True
    seen_through = torch.round(first / last) * last
    assert bool(program.lattice.matches_an_ijg_table(seen_through, known, last))
    mixed = torch.where(torch.arange(64) == 9, last, seen_through)  # where only the second coding left levels
    assert bool(program.lattice.matches_an_ijg_table(mixed, known, last))
    camera, _ = other_encoder_tables("flat", 3)
    assert not bool(
        program.lattice.matches_an_ijg_table(torch.from_numpy(camera).float(), known, torch.from_numpy(ijg_luma_table(35)).float())
    )
    only_dc = torch.zeros(64, dtype=torch.bool)
    only_dc[0] = True
    assert not bool(program.lattice.matches_an_ijg_table(seen_through, only_dc, last))  # one step tells nothing


def test_coarser_lattice_tells_a_coarse_table_from_a_first_coding_seen_through_a_finer_one():
    """Steps about twice the best IJG table's (another encoder's coarse table) are a coarser lattice; whole multiples
    (a first coding under the table) are that and a sublattice; the table's own steps, or steps clamped at 255 far
    beyond it, are neither."""
    table = torch.from_numpy(ijg_luma_table(23)).float()
    known = torch.zeros(64, dtype=torch.bool)
    known[[0, 1, 2, 8, 9, 10, 16, 17]] = True
    annex_k_12 = torch.from_numpy(other_encoder_tables("annex_k", 16)[0]).float()  # 69, 47, 43 against 35, 24, 22
    assert [bool(x) for x in coarser_lattice(annex_k_12, known, table)] == [True, False]
    assert [bool(x) for x in coarser_lattice(3 * table, known, table)] == [True, True]
    assert [bool(x) for x in coarser_lattice(table, known, table)] == [False, False]
    fine = torch.from_numpy(ijg_luma_table(90)).float()
    assert [bool(x) for x in coarser_lattice(torch.full((64,), 255.0), known, fine)] == [False, False]
    one_known = torch.zeros(64, dtype=torch.bool)
    one_known[0] = True
    assert [bool(x) for x in coarser_lattice(3 * table, one_known, table)] == [False, False]
    # Annex K at nominal 4 on a test photo, against IJG 27's table: three of four known steps 4x its, one not (117 for
    # 120): one coding, which a first coding seen through 27's lattice cannot leave
    steps, table_27, four_known = torch.ones(64), torch.from_numpy(ijg_luma_table(27)).float(), torch.zeros(64, dtype=torch.bool)
    four_known[[0, 1, 8, 9]] = True
    steps[[0, 1, 8, 9]] = torch.tensor([117.0, 80.0, 88.0, 88.0])
    assert table_27[[0, 1, 8, 9]].tolist() == [30.0, 20.0, 22.0, 22.0]
    assert [bool(x) for x in coarser_lattice(steps, four_known, table_27)] == [True, False]


@pytest.mark.parametrize("nominal", [16, 18])
def test_a_table_about_twice_an_ijg_tables_reads_at_its_own_equivalent(program, nominal):
    """Annex K scaled to equivalent 12 (nominal 16: steps about twice IJG 23's; 18: four times Table K.1, exactly twice
    IJG 25's) on a smooth picture, where few levels but 0 and 1 are seen: the finer IJG table fits with a prior's
    penalty only, and was read (25 for 12, determined) before the coarser lattice was checked."""
    smooth = np.asarray(Image.fromarray(SyntheticSource(count=1, size=256, seed=5).load(0)).filter(ImageFilter.GaussianBlur(1)))
    luma, chroma = other_encoder_tables("annex_k", nominal)
    _, fit, _, found = locate(program, read_image(io.BytesIO(jpeg_encode(smooth, 75, "4:2:2", [luma.tolist(), chroma.tolist()]))).pixels)
    truth = ijg_equivalent_quality(luma)
    assert bool(found) and not bool(fit.ijg) and abs(int(fit.quality) - truth) <= 1
    assert int(fit.quality_low) <= truth <= int(fit.quality_high) and int(fit.table_quality) > truth + 5


def test_a_sublattice_alone_is_no_recompression():
    """Coded at 10, then at 30: the steps are three times 30's, as one coding with a table three times 30's leaves them;
    the pixels cannot tell the two apart, the answer is the coarse table's equivalent (10) either way, and it is not
    flagged. A CNN far under the coarse table itself still shows an earlier coding."""
    through_30 = fit_of(10, ijg=False, plausible=(8, 9, 10, 11, 12), table=30)._replace(steps_ijg=t(True))  # IJG 10's, through 30's
    assert answer(vote_of(10.0), through_30)[:5] == (10.0, 8.0, 12.0, 1.0, False)
    assert answer(vote_of(10.0), through_30._replace(sublattice=t(False)))[:5] == (10.0, 8.0, 12.0, 1.0, False)
    under_coarse = fit_of(40, ijg=False, plausible=(38, 39, 40, 41, 42), table=80)._replace(steps_ijg=t(True))
    assert answer(vote_of(20.0), under_coarse)[4] is True


@pytest.mark.parametrize("coding", ["annex_k 2", "10 then 30"])
def test_one_coding_or_two_the_pixels_cannot_tell_apart_is_not_flagged_but_a_header_tells(scene, coding):
    """Annex K at nominal 2 (8x Table K.1, 4x IJG 25's) coded once, and IJG 10 then 30, leave the same kind of
    coefficients: on every 4th or 3rd point of the finer IJG table's lattice. From pixels both read at the coarse table
    (6, 10), unflagged, and the note names both readings (issue #13: no flag when the pixels cannot tell; flagged
    before). As JPEG files the header tells: IJG 30's table over pixels that allow 10 at most is a second coding; the
    Annex K file's own table is the coarse one, coded last."""
    if coding == "annex_k 2":
        luma, chroma = other_encoder_tables("annex_k", 2)
        data = jpeg_encode(scene, 75, "4:2:2", [luma.tolist(), chroma.tolist()])
        truth, finer = ijg_equivalent_quality(luma), 25
    else:
        data, truth, finer = jpeg_encode(jpeg_roundtrip(scene, 10), 30), 10, 30
    predictor = Predictor.from_pretrained()
    from_pixels, from_file = predictor.predict(read_image(io.BytesIO(data)).pixels), predictor.predict(io.BytesIO(data))
    for result in (from_pixels, from_file):
        assert result.method == "lattice" and abs(result.quality - truth) <= 1 and result.quality_low <= truth <= result.quality_high
    assert not from_pixels.recompressed
    assert any(note.startswith("one coding or two") and f"IJG {finer}'s" in note for note in from_pixels.notes)
    assert from_file.recompressed is (coding == "10 then 30")
    assert not any(note.startswith("one coding or two") for note in from_file.notes)


def test_an_undetermined_answer_spans_every_reading():
    """Issue #13's gradients: a range too wide to determine covers the lattice's plausible set and the CNN's voters."""
    # a strong lattice too wide to determine, the voters below it (a gradient coded at 1, the lattice reading 6..23)
    assert answer(vote_of(2.0, 1.0, 3.0), fit_of(10, plausible=tuple(range(6, 24)))) == (6.0, 1.0, 23.0, 1.0, False, False)
    # a weak lattice, voters too spread to determine: the lattice's plausible set reaches the truth beyond them
    weak = fit_of(99, strength=0.1, plausible=tuple(range(85, 101)))
    assert answer(vote_of(92.0, 86.0, 98.0), weak) == (92.0, 85.0, 100.0, 0.0, False, False)
    # a determined answer (no lattice evidence: the CNN's alone) keeps its own range
    no_lattice = fit_of(40, strength=0.1, plausible=tuple(range(30, 60)))._replace(found=t(False))
    assert answer(vote_of(41.3), no_lattice)[1:3] == (40.3, 42.3)


def test_recompressed_jpeg_file_is_flagged(scene, tmp_path):
    from q1net import Predictor

    path = tmp_path / "again.jpg"
    path.write_bytes(jpeg_encode(jpeg_roundtrip(scene, 30), 95))
    result = Predictor.from_pretrained().predict(path)
    assert result.header_quality == 95 and result.recompressed and abs(result.quality - 30) <= 2


def test_lattice_confirms_a_phase_the_detector_is_unsure_of(program, scene):
    """A mostly blank image: every phase scores alike, but the lattice is strong on the top-scoring one."""
    from q1net import Predictor

    mostly_white = scene.copy()
    mostly_white[48:, :] = 255
    mostly_white[:, 48:] = 255
    decoded = jpeg_roundtrip(mostly_white, 60)[3:, 5:]
    phase, _, _, found = locate(program, decoded)
    assert not bool(phase.sure) and (int(phase.dy), int(phase.dx)) == (5, 3) and found
    result = Predictor.from_pretrained().predict(decoded)
    assert result.grid == (5, 3) and result.grid_sure and result.quality == 60 and result.method == "lattice"


def test_the_in_place_log_sums_match_torch_and_leave_their_inputs_alone():
    """The likelihood chains run in place with exp's argument floored (q1net.forensics.ops): the sums must equal torch's
    own, also where terms lie hundreds of nats apart or at -inf, and no caller's tensor may change."""
    from q1net.forensics.lattice import DC_NEAR_STEP, DC_SHIFTS, NEAR_SHIFTS, log_lattice_ac, log_lattice_dc
    from q1net.forensics.ops import log_add_exp, log_sum_exp

    generator = torch.Generator().manual_seed(0)
    a = torch.randn(64, 63, 40, generator=generator) * 300
    b = torch.cat([torch.full((1, 63, 1), -torch.inf), torch.randn(63, 63, 1, generator=generator) * 300])
    kept = a.clone(), b.clone()
    assert torch.allclose(log_add_exp(a, b), torch.logaddexp(a, b), rtol=1e-6, atol=1e-5)
    assert torch.allclose(log_sum_exp(a, dim=2), torch.logsumexp(a, dim=2), rtol=1e-6, atol=1e-5)
    c, scale = torch.randn(32, 63, 1, generator=generator) * 40, torch.rand(63, 1, generator=generator) * 20 + 0.1
    steps, dc = torch.arange(1.0, 256.0), c[:, :1, 0]
    kept_c = c.clone()
    assert torch.isfinite(log_lattice_ac(c, steps, scale, (-1, 0, 1))).all()
    # from the DC step where the nearest three lattice points suffice, the full sum gives the very same values
    near = steps[DC_NEAR_STEP - 1 :]
    assert torch.equal(log_lattice_dc(dc, near, NEAR_SHIFTS), log_lattice_dc(dc, near, DC_SHIFTS))
    assert torch.equal(a, kept[0]) and torch.equal(b, kept[1]) and torch.equal(c, kept_c)


def test_the_fused_level_terms_are_the_laplacian_bin_masses_times_the_noise_density():
    """The lattice's terms run as fused multiply-adds with level 0 told apart by min(|k|, 1) (q1net.forensics.lattice):
    they must equal log P(k | s) + log N(miss; SIGMA) written out, for level 0 and levels either side, at coarse and
    fine step-to-scale ratios."""
    from q1net.forensics.lattice import SIGMA, level_priors, log_level_terms

    ratio = torch.tensor([0.05, 0.5, 2.0, 9.0])[:, None]  # (4, 1): steps over the Laplacian's scale
    level = torch.tensor([-3.0, -1.0, 0.0, 1.0, 2.0, 7.0])[None, :]  # (1, 6)
    miss = torch.tensor([0.4, -0.1, 0.0, 0.25, -0.3, 0.05])[None, :]
    share = math.log(0.95)
    zero_bin = torch.log(1 - torch.exp(-ratio / 2))  # a Laplacian's mass within half a step of 0
    other_bins = math.log(0.5) + torch.log(1 - torch.exp(-ratio)) - (level.abs() - 0.5) * ratio
    noise = -0.5 * (miss / SIGMA) ** 2 - math.log(SIGMA * math.sqrt(2 * math.pi))
    expected = torch.where(level == 0, zero_bin, other_bins) + noise + share
    fused = log_level_terms(level.expand(4, -1), miss.expand(4, -1), ratio, level_priors(ratio, share))
    assert torch.allclose(fused, expected, rtol=1e-5, atol=1e-5)


def test_the_delegable_round_compare_and_select_are_torchs_own():
    """round_, at_least and select stand in for torch.round, >= and torch.where so that the phone programs' delegates
    take them (q1net.forensics.ops): bit for bit on the values the lattice meets, halves (ties to even), negatives,
    zeros and neighbours of the bound included; log_sum_exp_terms is log_sum_exp of the stacked terms."""
    from q1net.forensics.ops import at_least, log_sum_exp, log_sum_exp_terms, round_, select

    generator = torch.Generator().manual_seed(0)
    halves = torch.arange(-2048, 2049, dtype=torch.float32) / 2  # every tie from -1024 to 1024
    spread = torch.randn(100_000, generator=generator) * torch.logspace(-6, 4, 100_000)
    values = torch.cat([halves, spread, torch.tensor([-0.0, 0.0, 4194303.5, -4194303.5, 0.49999997, -0.49999997])])
    assert torch.equal(round_(values.clone()), torch.round(values))
    bound = torch.tensor([0.5])
    near = torch.cat([values, torch.nextafter(bound, bound + 1), torch.nextafter(bound, bound - 1), bound])
    for threshold in (0.5, 0.0):
        assert torch.equal(at_least(near, threshold), (near >= threshold).float())
    keep = at_least(values, 0.0)
    a, b = torch.randn(len(values), generator=generator) * 1e3, torch.randn(len(values), generator=generator) * 1e-3
    assert torch.equal(select(keep, a, b), torch.where(values >= 0, a, b))
    terms = [torch.randn(64, 63, 40, generator=generator) * 300 for _ in range(3)]
    assert torch.allclose(log_sum_exp_terms(terms), log_sum_exp(torch.stack(terms), dim=0), rtol=1e-6, atol=1e-5)
